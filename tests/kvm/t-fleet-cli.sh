#!/bin/bash
# Tier 1 (no KVM needed): `godwit fleet` against one etcd and no host agents.
# Hosts are faked with hosts/H records under a lease (etcdctl); the test plays
# the agents' part where the CLI waits for them (owner, migration, status).
# Checks: hosts/ls tables and --json, lost hosts and down VMs, create's spec
# and owner, its refusals (capacity, cordon, host not up, options the agent
# sets), stop and rm, migrate's intent (token, id) and refusals, its outcome
# from the migration record (done, failed, timeout), drain (cordon, intents to
# hosts with room, a VM that fits nowhere), rebalance --dry-run's plan and a
# run, uncordon, an unreachable etcd.
. "$(dirname "$0")/../lib.sh"

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
	t_fail fleet-cli "etcd and etcdctl are needed (apt-get install etcd-server etcd-client)"
	exit 0
fi

# Two free ports for this etcd (client, peer), away from the default 2379/2380.
free_port() {
	local p
	for ((p = $1; p < $1 + 500; p++)); do
		ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
	done
	return 1
}
base=$((31000 + ($$ % 200) * 10))
P=$(free_port "$base") && Q=$(free_port $((P + 1))) || { t_fail fleet-cli "no free port"; exit 0; }
URL=http://127.0.0.1:$P
etcd --name default --data-dir "$T_TMP/etcd" --listen-client-urls "$URL" \
	--advertise-client-urls "$URL" --listen-peer-urls "http://127.0.0.1:$Q" \
	--initial-advertise-peer-urls "http://127.0.0.1:$Q" \
	--initial-cluster "default=http://127.0.0.1:$Q" >"$T_TMP/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; t_cleanup' EXIT

export ETCDCTL_API=3
ec() { etcdctl --endpoints "$URL" --command-timeout=5s "$@"; }
FL=("$GODWIT" fleet --etcd "$URL")
F() { "${FL[@]}" "$@"; }
val() { ec get --print-value-only "$1"; }

for ((i = 0; i < 100; i++)); do
	ec endpoint health >/dev/null 2>&1 && break
	sleep 0.1
done
if ! ec endpoint health >/dev/null 2>&1; then
	t_fail fleet-etcd "etcd did not start: $(tail -c 400 "$T_TMP/etcd.log")"
	exit 0
fi
t_pass fleet-etcd

# check NAME COND MSG: PASS if the shell condition holds.
check() { if eval "$2"; then t_pass "$1"; else t_fail "$1" "$3"; fi; }

MiB=1048576
lease=$(ec lease grant 120 | awk '{print $2}')
host() {  # host NAME MEM_MIB CPUS
	ec put --lease="$lease" "/godwit/hosts/$1" "{\"name\":\"$1\",\"addr\":\"198.18.0.$RANDOM:7070\",\
\"mem_capacity\":$(($2 * MiB)),\"cpu_capacity\":$3,\"mem_used\":999,\"cpus_used\":0,\"vms\":[],\
\"pid\":1,\"tls\":true,\"version\":\"test\",\"started\":1}" >/dev/null
}
status() {  # status VM HOST EPOCH STATE
	ec put "/godwit/vms/$1/status" "{\"host\":\"$2\",\"epoch\":$3,\"state\":\"$4\",\"pid\":4242,\
\"api\":\"/run/godwit/$1.api\",\"console\":\"/var/log/godwit/$1.log\",\"error\":\"\",\"updated\":1}" >/dev/null
}
host a 4096 8
host b 2048 4
host c 1024 2

# ---- usage, help, an unreachable etcd ----
t_expect fleet-usage-none 2 'usage: godwit fleet' "$GODWIT" fleet
t_expect fleet-usage-sub 2 "unknown subcommand 'frob'" "${FL[@]}" frob
t_expect fleet-help 0 - "${FL[@]}" --help
grep -q 'rebalance' "$T_TMP/fleet-help.out" || t_fail fleet-help-text "fleet --help lacks rebalance"
for s in hosts ls create stop rm migrate drain cordon uncordon rebalance; do
	if "${FL[@]}" "$s" --help 2>/dev/null | grep -q "godwit fleet $s"; then :; else
		t_fail "fleet-help-$s" "godwit fleet $s --help: no usage line"
	fi
done
t_pass fleet-help-subcommands
t_expect fleet-usage-name 2 "not a valid VM name" "${FL[@]}" create 'bad/name' --on a -- --kernel /k
t_expect fleet-usage-no-on 2 'on HOST is required' "${FL[@]}" create w --no-wait -- --kernel /k
t_expect fleet-usage-run-api 2 'api is set by the host agent' \
	"${FL[@]}" create w --on a --no-wait -- --kernel /k --api /tmp/s
t_expect fleet-usage-run-incoming 2 'incoming is set by the host agent' \
	"${FL[@]}" create w --on a --no-wait -- --kernel /k --incoming tcp:1.2.3.4:5
t_expect fleet-usage-migrate-to 2 'to HOST is required' "${FL[@]}" migrate w
t_expect fleet-usage-parallel 2 'parallel 0: expected' "${FL[@]}" drain a --parallel 0
t_expect fleet-unreachable 1 'etcd unreachable at http://127.0.0.1:1' \
	"$GODWIT" fleet --etcd http://127.0.0.1:1 hosts
GODWIT_ETCD=$URL t_expect fleet-env-etcd 0 - "$GODWIT" fleet hosts

# ---- hosts ----
t_expect fleet-hosts 0 - "${FL[@]}" hosts
out=$T_TMP/fleet-hosts.out
check fleet-hosts-table "grep -Eq '^HOST +STATE +CORDONED +MEM +CPUS +VMS +ADDR' '$out' &&
	grep -Eq '^a +up +no +0/4096 MiB +0/8 +0 +198\.18\.' '$out' &&
	grep -Eq '^c +up +no +0/1024 MiB +0/2 +0 ' '$out'" "$(cat "$out")"
j=$(F --json hosts)
check fleet-hosts-json "jq -e 'length == 3 and .[0].name == \"a\" and .[0].state == \"up\" and
	.[0].mem_capacity == 4294967296 and .[0].mem_used == 0 and .[1].cpu_capacity == 4' <<<'$j' >/dev/null" "$j"

# ---- create ----
t_expect fleet-create 0 - "${FL[@]}" create web1 --on a --no-wait -- --kernel /boot/k --mem 1G --cpus 2 \
	--cmdline 'console=ttyS0 quiet'
check fleet-create-owner '[ "$(val /godwit/vms/web1/owner)" = "a 1" ]' "owner: $(val /godwit/vms/web1/owner)"
spec=$(val /godwit/vms/web1/spec)
check fleet-create-spec "jq -e '.name == \"web1\" and .mem == 1073741824 and .cpus == 2 and
	.restart == \"never\" and (.created | test(\"^20[0-9-]+T[0-9:]+Z$\")) and
	.args == [\"--kernel\",\"/boot/k\",\"--mem\",\"1G\",\"--cpus\",\"2\",\"--cmdline\",\"console=ttyS0 quiet\"]' \
	<<<'$spec' >/dev/null" "$spec"
t_expect fleet-create-exists 1 'VM web1 already exists on host a' \
	"${FL[@]}" create web1 --on b --no-wait -- --kernel /k
t_expect fleet-create-default-size 0 - "${FL[@]}" --json create c1 --on c --no-wait --restart always -- --kernel /k --mem 512M
check fleet-create-json "jq -e '.owner == \"c 1\" and .spec.mem == 536870912 and .spec.cpus == 1 and
	.spec.restart == \"always\"' '$T_TMP/fleet-create-default-size.out' >/dev/null" \
	"$(cat "$T_TMP/fleet-create-default-size.out")"
t_expect fleet-create-capacity 1 'host c has 512 MiB free, big needs 2048 MiB' \
	"${FL[@]}" create big --on c --no-wait -- --kernel /k --mem 2G
t_expect fleet-create-cpus 1 'host c has 1 CPU free, big needs 2' \
	"${FL[@]}" create big --on c --no-wait -- --kernel /k --mem 64M --cpus 2
t_expect fleet-create-not-up 1 'host zz is not up' "${FL[@]}" create big --on zz --no-wait -- --kernel /k
t_expect fleet-cordon 0 - "${FL[@]}" cordon b
check fleet-cordon-key '[ "$(val /godwit/cordon/b)" = 1 ]' "cordon/b: $(val /godwit/cordon/b)"
t_expect fleet-create-cordoned 1 'host b is cordoned' "${FL[@]}" create big --on b --no-wait -- --kernel /k
check fleet-create-refused-nothing-written '[ -z "$(ec get --prefix /godwit/vms/big/ --keys-only)" ]' \
	"a refused create wrote $(ec get --prefix /godwit/vms/big/ --keys-only)"
check fleet-hosts-cordoned "F hosts | grep -Eq '^b +up +yes +0/2048 MiB' &&
	[ \"\$(F hosts | awk 'NR > 1 {printf \"%s\", \$1}')\" = abc ]" "$(F hosts)"
t_expect fleet-uncordon 0 - "${FL[@]}" uncordon b
check fleet-uncordon-out "grep -q 'host b uncordoned' '$T_TMP/fleet-uncordon.out'" "$(cat "$T_TMP/fleet-uncordon.out")"
check fleet-uncordon-key '[ -z "$(val /godwit/cordon/b)" ]' "cordon/b still there"

# create waits for the agent's status: running (played after 1 s), and failed.
(sleep 1; status web2 b 1 starting; sleep 0.5; status web2 b 1 running) &
bg=$!
t_expect fleet-create-wait 0 - "${FL[@]}" create web2 --on b -- --kernel /k --mem 256M
check fleet-create-wait-out "grep -q 'web2: running on b (epoch 1), pid 4242, console /var/log/godwit/web2.log' \
	'$T_TMP/fleet-create-wait.out'" "$(cat "$T_TMP/fleet-create-wait.out")"
(sleep 1; ec put /godwit/vms/bad1/status '{"host":"c","epoch":1,"state":"failed","error":"cannot open kernel /k"}' >/dev/null) &
bg=$!
t_expect fleet-create-failed 1 'bad1 failed on c: cannot open kernel /k' \
	"${FL[@]}" create bad1 --on c -- --kernel /k --mem 64M
wait "$bg"

# ---- ls; a lost host and its down VM; malformed records ----
status web1 a 1 running
status c1 c 1 running
ec put /godwit/vms/ghost/spec '{"name":"ghost","mem":268435456,"cpus":1,"args":["--kernel","/k"],"restart":"always","created":1}' >/dev/null
ec put /godwit/vms/ghost/owner 'd 3' >/dev/null
ec put /godwit/vms/junk/spec '{"name":"junk","mem":"lots"' >/dev/null
ec put /godwit/vms/junk/owner 'nobody' >/dev/null
ec put /godwit/vms/junk/status '{"host":"a","state":"RUN NING"}' >/dev/null
t_expect fleet-ls 0 'malformed record /godwit/vms/junk/spec' "${FL[@]}" ls
out=$T_TMP/fleet-ls.out
check fleet-ls-malformed "grep -q 'malformed record /godwit/vms/junk/owner: not \"HOST EPOCH\"' '$T_TMP/fleet-ls.err' &&
	grep -q 'malformed record /godwit/vms/junk/status: state is not a word' '$T_TMP/fleet-ls.err' &&
	grep -Eq '^junk +- +bad-owner ' '$out'" "$(cat "$T_TMP/fleet-ls.err" "$out")"
check fleet-ls-table "grep -Eq '^VM +HOST +STATE +EPOCH +PID +CONSOLE +MIGRATION' '$out' &&
	grep -Eq '^web1 +a +running +1 +4242 +/var/log/godwit/web1.log +-$' '$out' &&
	grep -Eq '^ghost +d +down +3 ' '$out'" "$(cat "$out")"
j=$(F --json ls 2>/dev/null)
check fleet-ls-json "jq -e 'map(select(.name == \"web1\"))[0] | .state == \"running\" and .epoch == 1 and
	.host == \"a\" and .pid == 4242 and .migration == null' <<<'$j' >/dev/null &&
	jq -e 'map(select(.name == \"ghost\"))[0].state == \"down\"' <<<'$j' >/dev/null" "$j"
check fleet-hosts-lost "F hosts 2>/dev/null | grep -Eq '^d +lost +no +256/0 MiB +1/0 +1 '" "$(F hosts 2>&1)"
check fleet-hosts-usage-from-specs "F hosts 2>/dev/null | grep -Eq '^a +up +no +1024/4096 MiB +2/8 +1 '" "$(F hosts 2>&1)"
t_expect fleet-rm-running 1 'web1 is running on a: stop it first' "${FL[@]}" rm web1
t_expect fleet-rm-down 0 - "${FL[@]}" rm ghost
check fleet-rm-down-out "grep -q 'ghost removed (it was down)' '$T_TMP/fleet-rm-down.out'" "$(cat "$T_TMP/fleet-rm-down.out")"
check fleet-rm-down-gone '[ -z "$(ec get --prefix /godwit/vms/ghost/ --keys-only)" ]' "ghost's keys remain"
ec del --prefix /godwit/vms/junk/ >/dev/null
ec del --prefix /godwit/vms/bad1/ >/dev/null

# ---- stop ----
(sleep 1; status web2 b 1 stopped) &
bg=$!
t_expect fleet-stop 0 - "${FL[@]}" stop web2
check fleet-stop-intent "jq -e '.op == \"stop\"' <<<'$(val /godwit/vms/web2/intent)' >/dev/null" \
	"intent: $(val /godwit/vms/web2/intent)"
wait "$bg"
t_expect fleet-stop-again 0 - "${FL[@]}" stop web2
check fleet-stop-again-out "grep -q 'web2 is already stopped' '$T_TMP/fleet-stop-again.out'" "$(cat "$T_TMP/fleet-stop-again.out")"
t_expect fleet-rm-stopped 0 - "${FL[@]}" rm web2
check fleet-rm-stopped-gone '[ -z "$(ec get --prefix /godwit/vms/web2/ --keys-only)" ]' "web2's keys remain"

# ---- migrate: refusals ----
t_expect fleet-migrate-self 1 'web1 already runs on a' "${FL[@]}" migrate web1 --to a
t_expect fleet-migrate-not-up 1 'host zz is not up' "${FL[@]}" migrate web1 --to zz
t_expect fleet-migrate-room 1 'host c has 512 MiB free, web1 needs 1024 MiB' "${FL[@]}" migrate web1 --to c
F cordon b >/dev/null
t_expect fleet-migrate-cordoned 1 'host b is cordoned' "${FL[@]}" migrate web1 --to b
F uncordon b >/dev/null
t_expect fleet-migrate-no-vm 1 'no VM nosuch' "${FL[@]}" migrate nosuch --to b
check fleet-migrate-refused-no-intent '[ -z "$(val /godwit/vms/web1/intent)" ]' "an intent was written"
F create st1 --on a --no-wait -- --kernel /k --mem 64M >/dev/null
status st1 a 1 stopped
t_expect fleet-migrate-not-running 1 'st1 is not running \(state: stopped\)' "${FL[@]}" migrate st1 --to b

# ---- migrate: the intent, then a timeout, a failure, a success ----
# An earlier migration's record (no id: older than the intent) is not this one's outcome.
ec put /godwit/vms/web1/migration '{"phase":"failed","error":"an old one"}' >/dev/null
t_expect fleet-migrate-timeout 1 'did not end within 1 s' "${FL[@]}" migrate web1 --to b --timeout 1
intent=$(val /godwit/vms/web1/intent)
check fleet-migrate-intent "jq -e '.op == \"migrate\" and .to == \"b\" and .with_disks == false and
	(.token | test(\"^[0-9a-f]{32}$\")) and (.id | test(\"^[0-9]+$\"))' <<<'$intent' >/dev/null" "$intent"
t_expect fleet-migrate-busy 1 'web1 is already migrating to b' "${FL[@]}" migrate web1 --to b
ec del /godwit/vms/web1/intent >/dev/null
# Nor is one with another id, written after the intent.
(for ((i = 0; i < 50; i++)); do [ -n "$(val /godwit/vms/web1/intent)" ] && break; sleep 0.1; done
 ec put /godwit/vms/web1/migration '{"id":"17","phase":"failed","error":"another one"}' >/dev/null) &
bg=$!
t_expect fleet-migrate-token-fresh 1 'did not end within 2 s' "${FL[@]}" migrate web1 --to b --timeout 2 --with-disks
wait "$bg"
intent2=$(val /godwit/vms/web1/intent)
check fleet-migrate-token-unique "[ \"\$(jq -r .token <<<'$intent2')\" != \"\$(jq -r .token <<<'$intent')\" ] &&
	jq -e '.with_disks == true' <<<'$intent2' >/dev/null" "$intent / $intent2"
ec del /godwit/vms/web1/intent >/dev/null

# The agent's part: wait for the intent, then write the migration record (and owner).
agent_migration() {  # VM PHASE [ERROR]: answer the next intent with PHASE
	local it id to i
	for ((i = 0; i < 100; i++)); do
		it=$(val "/godwit/vms/$1/intent")
		[ -n "$it" ] && break
		sleep 0.1
	done
	id=$(jq -r .id <<<"$it"); to=$(jq -r .to <<<"$it")
	ec put "/godwit/vms/$1/migration" "{\"id\":\"$id\",\"from\":\"a\",\"to\":\"$to\",\"epoch\":1,\
\"phase\":\"copy\",\"progress\":{\"rounds\":2,\"bytes\":104857600,\"remaining_bytes\":1048576}}" >/dev/null
	sleep 0.5
	if [ "$2" = done ]; then
		ec put "/godwit/vms/$1/owner" "$to 2" >/dev/null
		ec put "/godwit/vms/$1/migration" "{\"id\":\"$id\",\"from\":\"a\",\"to\":\"$to\",\"epoch\":1,\"phase\":\"done\"}" >/dev/null
		# the new host's agent reports it running a moment later
		sleep 1
		status "$1" "$to" 2 running
	else
		ec put "/godwit/vms/$1/migration" "{\"id\":\"$id\",\"from\":\"a\",\"to\":\"$to\",\"epoch\":1,\"phase\":\"failed\",\"error\":\"$3\"}" >/dev/null
	fi
	ec del "/godwit/vms/$1/intent" >/dev/null
}
agent_migration web1 failed "destination refused: no room" &
bg=$!
t_expect fleet-migrate-failed 1 'migration failed: destination refused: no room' "${FL[@]}" migrate web1 --to b --timeout 20
wait "$bg"
check fleet-migrate-failed-owner '[ "$(val /godwit/vms/web1/owner)" = "a 1" ]' "owner: $(val /godwit/vms/web1/owner)"
agent_migration web1 done &
bg=$!
t_expect fleet-migrate-done 0 'web1: a -> b: copy, round 2, sent 100.0 MiB, remaining 1.0 MiB' \
	"${FL[@]}" migrate web1 --to b --timeout 20
wait "$bg"
check fleet-migrate-done-out "grep -Eq '^web1: a -> b in [0-9]+ ms' '$T_TMP/fleet-migrate-done.out'" \
	"$(cat "$T_TMP/fleet-migrate-done.out")"
check fleet-migrate-owner '[ "$(val /godwit/vms/web1/owner)" = "b 2" ]' "owner: $(val /godwit/vms/web1/owner)"
# `fleet migrate` ends when the new host says the VM runs there (1 s after the record
# said done, 1.5 s after the intent), not before.
ms=$(sed -n 's/^web1: a -> b in \([0-9]*\) ms.*/\1/p' "$T_TMP/fleet-migrate-done.out")
check fleet-migrate-waits-status '[ "${ms:-0}" -ge 1400 ]' "it ended after ${ms:-?} ms"
# --json, and a record without an id (the revision tells it is ours).
status web1 b 2 running
(for ((i = 0; i < 100; i++)); do [ -n "$(val /godwit/vms/web1/intent)" ] && break; sleep 0.1; done
 ec put /godwit/vms/web1/owner 'a 3' >/dev/null
 ec put /godwit/vms/web1/migration '{"phase":"done"}' >/dev/null
 ec del /godwit/vms/web1/intent >/dev/null
 sleep 0.5
 status web1 a 3 running) &
bg=$!
t_expect fleet-migrate-json 0 - "${FL[@]}" --json migrate web1 --to a --timeout 20 -q
wait "$bg"
check fleet-migrate-json-out "jq -e '.ok == true and .owner == \"a 3\" and .migration.phase == \"done\" and
	.vm == \"web1\"' '$T_TMP/fleet-migrate-json.out' >/dev/null" "$(cat "$T_TMP/fleet-migrate-json.out")"
status web1 a 3 running

# ---- drain ----
# a holds web1 1024 (2 CPUs) + st1 64 (stopped: counts for nothing) + d1 256 + d2 128 + d3 64
# + big 2560 = 4032 of 4096;
# b: 0 of 2048 (4 CPUs); c: c1 512 of 1024 (1 of 2 CPUs).  big fits nowhere.
for v in d1:256M d2:128M d3:64M big:2560M; do
	"${FL[@]}" create "${v%%:*}" --on a --no-wait -- --kernel /k --mem "${v#*:}" >/dev/null || t_fail fleet-drain-setup "create $v"
	status "${v%%:*}" a 1 running
done
ec put /godwit/vms/web1/owner 'a 3' >/dev/null
agent_all() {  # SECONDS: answer every migrate intent as a committed migration
	local end=$((SECONDS + $1)) k vm it to id owner ep
	while [ $SECONDS -lt "$end" ]; do
		for k in $(ec get --prefix /godwit/vms/ --keys-only | grep '/intent$'); do
			vm=${k#/godwit/vms/}; vm=${vm%/intent}
			it=$(val "$k")
			[ "$(jq -r .op <<<"$it")" = migrate ] || continue
			to=$(jq -r .to <<<"$it"); id=$(jq -r .id <<<"$it")
			owner=$(val "/godwit/vms/$vm/owner"); ep=${owner#* }
			echo "$vm ${owner% *} $to" >>"$T_TMP/agent-moves"
			ec put "/godwit/vms/$vm/owner" "$to $((ep + 1))" >/dev/null
			ec put "/godwit/vms/$vm/migration" "{\"id\":\"$id\",\"phase\":\"done\"}" >/dev/null
			status "$vm" "$to" $((ep + 1)) running
			ec del "$k" >/dev/null
		done
		sleep 0.2
	done
}
: >"$T_TMP/agent-moves"
agent_all 20 &
agent_pid=$!
t_expect fleet-drain 1 'stayed on a: big' "${FL[@]}" drain a --parallel 2 --timeout 15
kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null
out=$T_TMP/fleet-drain.out
check fleet-drain-cordon '[ "$(val /godwit/cordon/a)" = 1 ]' "cordon/a: $(val /godwit/cordon/a)"
check fleet-drain-lines "grep -Eq '^web1: a -> b in [0-9]+ ms' '$out' && grep -Eq '^d1: a -> [bc] in' '$out' &&
	grep -Eq '^d2: a -> [bc] in' '$out' && grep -Eq '^d3: a -> [bc] in' '$out' &&
	grep -Eq '^big: stays on a: no host has room for big \(2560 MiB' '$out' &&
	grep -q '^st1: skipped: stopped' '$out'" "$(cat "$out")"
check fleet-drain-intents "[ \$(wc -l <'$T_TMP/agent-moves') -eq 4 ] && ! grep -q '^big ' '$T_TMP/agent-moves'" \
	"agent saw: $(cat "$T_TMP/agent-moves")"
j=$(F --json hosts)
check fleet-drain-capacity "jq -e 'all(.[] | select(.state == \"up\"); .mem_used <= .mem_capacity and
	.cpus_used <= .cpu_capacity)' <<<'$j' >/dev/null &&
	jq -e 'map(select(.name == \"a\"))[0] | .vms == [\"big\",\"st1\"] and
	.mem_used == 2684354560 and .cpus_used == 1' <<<'$j' >/dev/null" "$j"
t_expect fleet-drain-json 1 - "${FL[@]}" --json drain a
check fleet-drain-json-out "jq -e '.host == \"a\" and .moved == [] and (.stayed | map(.vm)) == [\"big\"] and
	(.skipped | map(.vm)) == [\"st1\"]' '$T_TMP/fleet-drain-json.out' >/dev/null" \
	"$(cat "$T_TMP/fleet-drain-json.out")"
t_expect fleet-uncordon-a 0 - "${FL[@]}" uncordon a
check fleet-uncordon-a-key '[ -z "$(val /godwit/cordon/a)" ]' "cordon/a still there"

# ---- rebalance ----
# A fresh skew: a 4096 holds r1 1G, r2 1G, r3 512M, r4 256M; b 2048 and c 1024 are empty.
ec del --prefix /godwit/vms/ >/dev/null
for v in r1:1G r2:1G r3:512M r4:256M; do
	"${FL[@]}" create "${v%%:*}" --on a --no-wait -- --kernel /k --mem "${v#*:}" >/dev/null
	status "${v%%:*}" a 1 running
done
t_expect fleet-rebalance-dry 0 - "${FL[@]}" rebalance --dry-run
out=$T_TMP/fleet-rebalance-dry.out
check fleet-rebalance-plan "[ \"\$(grep '^move' '$out')\" = \"move r1 from a to b
move r3 from a to c\" ]" "$(cat "$out")"
check fleet-rebalance-dry-nothing '[ -z "$(ec get --prefix /godwit/vms/ --keys-only | grep intent)" ]' \
	"--dry-run wrote an intent"
t_expect fleet-rebalance-dry-max 0 - "${FL[@]}" --json rebalance --dry-run --max-moves 1
check fleet-rebalance-dry-json "jq -e '.moves == [{\"vm\":\"r1\",\"from\":\"a\",\"to\":\"b\",\"mem\":1073741824}] and
	.spread_after < .spread_before' '$T_TMP/fleet-rebalance-dry-max.out' >/dev/null" \
	"$(cat "$T_TMP/fleet-rebalance-dry-max.out")"
: >"$T_TMP/agent-moves"
agent_all 20 &
agent_pid=$!
t_expect fleet-rebalance 0 - "${FL[@]}" rebalance --timeout 15
kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null
check fleet-rebalance-moved "grep -Eq '^r1: a -> b in' '$T_TMP/fleet-rebalance.out' &&
	grep -Eq '^r3: a -> c in' '$T_TMP/fleet-rebalance.out' &&
	[ \"\$(val /godwit/vms/r1/owner)\" = 'b 2' ] && [ \"\$(val /godwit/vms/r3/owner)\" = 'c 2' ]" \
	"$(cat "$T_TMP/fleet-rebalance.out"; cat "$T_TMP/agent-moves")"
t_expect fleet-rebalance-even 0 - "${FL[@]}" rebalance --dry-run
check fleet-rebalance-nothing "grep -q 'nothing to move' '$T_TMP/fleet-rebalance-even.out'" \
	"$(cat "$T_TMP/fleet-rebalance-even.out")"

# ---- a malformed host record is reported, never trusted ----
ec put --lease="$lease" /godwit/hosts/e '{"name":"e","mem_capacity":-5}' >/dev/null
t_expect fleet-hosts-malformed 0 'malformed record /godwit/hosts/e: mem_capacity' "${FL[@]}" hosts
t_expect fleet-create-malformed-host 1 "host e's record is malformed" \
	"${FL[@]}" create x1 --on e --no-wait -- --kernel /k --mem 64M
ec put --lease="$lease" /godwit/hosts/e 'not json' >/dev/null
t_expect fleet-ls-malformed-host 0 'malformed record /godwit/hosts/e: not JSON' "${FL[@]}" ls
