#!/bin/bash
# Tier 1 (no /dev/kvm needed): the etcd client (src/fleet/etcd.c) against a real etcd
# (Debian's etcd-server, /usr/bin/etcd).  The script starts its own members on 127.0.0.1,
# on free ports the kernel picks (so parallel runs do not clash), with data directories
# under the test's temporary directory, and build/tests/etcd-test (tests/kvm/etcd_test.c)
# prints the PASS/FAIL lines:
#   etcd-open etcd-kv etcd-txn etcd-lease etcd-threads etcd-timeout etcd-bad-urls
#                         one member: get/put/prefix/delete, transactions (create if
#                         absent, the owner hand-off with a veto), leases (revoke, expiry),
#                         two threads sharing a client, a silent endpoint, bad URLs
#   etcd-failover         the first URL a dead port, the second the member
#   etcd-all-dead         every URL dead: -ECONNREFUSED in under a second
#   etcd-tls, etcd-tls-untrusted
#                         https with client certificates (made with openssl here): works
#                         with the tls_dir, refused without the CA
#   etcd-cluster, etcd-cluster-member-lost
#                         3 members; the leader, which the client uses, is killed
#                         (SIGKILL) and reads, writes and transactions go on through the
#                         others once they elected a new one (each retry is printed)
# Every etcd started here is killed and its directory removed on exit.
. "$(dirname "$0")/../lib.sh"

ETCD_TEST=${ETCD_TEST:-$(dirname "$GODWIT")/tests/etcd-test}
ETCD=${ETCD:-/usr/bin/etcd}
ETCD_PIDS=()

etcd_cleanup() {
	local p
	for p in "${ETCD_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	t_cleanup
}
trap etcd_cleanup EXIT

[ -x "$ETCD_TEST" ] || { t_fail etcd "$ETCD_TEST not built (make unit)"; exit 0; }
[ -x "$ETCD" ] || { t_fail etcd "no etcd at $ETCD (make deps installs etcd-server)"; exit 0; }

# free_ports N: N distinct free loopback TCP ports, held together while they are picked.
free_ports() {
	python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

# start_member NAME CLIENT PEER CLUSTER TOKEN: one etcd member in the background (its pid in
# ETCD_PIDS and in LAST_PID), its log in $T_TMP/NAME.log.
start_member() {
	local name=$1 cport=$2 pport=$3 cluster=$4 token=$5
	"$ETCD" --name "$name" --data-dir "$T_TMP/$name.etcd" \
		--listen-client-urls "http://127.0.0.1:$cport" \
		--advertise-client-urls "http://127.0.0.1:$cport" \
		--listen-peer-urls "http://127.0.0.1:$pport" \
		--initial-advertise-peer-urls "http://127.0.0.1:$pport" \
		--initial-cluster "$cluster" --initial-cluster-state new \
		--initial-cluster-token "$token" \
		</dev/null >"$T_TMP/$name.log" 2>&1 &
	LAST_PID=$!
	ETCD_PIDS+=("$LAST_PID")
}

# wait_healthy PORT SECS: until the member at PORT says it is healthy (it has a leader).
wait_healthy() {
	local end=$((SECONDS + $2))
	while [ "$SECONDS" -lt "$end" ]; do
		curl -s --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null |
			grep -q '"health":"true"' && return 0
		sleep 0.1
	done
	return 1
}

# run_test NAME ARGS...: etcd-test with ARGS, its PASS/FAIL lines passed on.
run_test() {
	local name=$1 rc
	shift
	TIER=$TIER timeout 120 "$ETCD_TEST" "$@" >"$T_TMP/$name.out" 2>"$T_TMP/$name.err"
	rc=$?
	grep -E '^(PASS|FAIL|SKIP) ' "$T_TMP/$name.out"
	grep -E '^#' "$T_TMP/$name.out" >&2
	if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$T_TMP/$name.out"; then
		t_fail "etcd-$name" "etcd-test exited with status $rc: $(tail -c 600 "$T_TMP/$name.err")"
	fi
}

# One member.
read -r C P DEAD1 DEAD2 <<<"$(free_ports 4)"
start_member solo "$C" "$P" "solo=http://127.0.0.1:$P" "godwit-test-$$-solo"
if ! wait_healthy "$C" 30; then
	t_fail etcd "etcd on 127.0.0.1:$C not healthy after 30 s: $(tail -c 600 "$T_TMP/solo.log")"
	exit 0
fi
run_test basic basic "http://127.0.0.1:$C"
run_test failover failover "http://127.0.0.1:$DEAD1" "http://127.0.0.1:$C"
run_test dead dead "http://127.0.0.1:$DEAD1,http://127.0.0.1:$DEAD2"

# One member over https, with client certificates (a CA, and one certificate for
# 127.0.0.1 that serves both sides).
mk_certs() {
	local d=$1
	mkdir -p "$d"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj "/CN=godwit etcd test CA" -keyout "$d/ca.key" -out "$d/ca.pem" &&
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
		-keyout "$d/key.pem" -out "$d/req.pem" &&
	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/ext" &&
	openssl x509 -req -in "$d/req.pem" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
		-days 2 -extfile "$d/ext" -out "$d/cert.pem"
}
CERTS=$T_TMP/certs
if ! mk_certs "$CERTS" >"$T_TMP/certs.log" 2>&1; then
	t_fail etcd-tls "cannot make test certificates: $(tail -c 400 "$T_TMP/certs.log")"
else
	read -r TC TP <<<"$(free_ports 2)"
	"$ETCD" --name tls --data-dir "$T_TMP/tls.etcd" \
		--listen-client-urls "https://127.0.0.1:$TC" --advertise-client-urls "https://127.0.0.1:$TC" \
		--listen-peer-urls "http://127.0.0.1:$TP" --initial-advertise-peer-urls "http://127.0.0.1:$TP" \
		--initial-cluster "tls=http://127.0.0.1:$TP" --initial-cluster-token "godwit-test-$$-tls" \
		--cert-file "$CERTS/cert.pem" --key-file "$CERTS/key.pem" \
		--trusted-ca-file "$CERTS/ca.pem" --client-cert-auth \
		</dev/null >"$T_TMP/tls.log" 2>&1 &
	ETCD_PIDS+=("$!")
	ok=
	for ((i = 0; i < 300; i++)); do
		curl -s --max-time 1 --cacert "$CERTS/ca.pem" --cert "$CERTS/cert.pem" \
			--key "$CERTS/key.pem" "https://127.0.0.1:$TC/health" 2>/dev/null |
			grep -q '"health":"true"' && { ok=1; break; }
		sleep 0.1
	done
	if [ -z "$ok" ]; then
		t_fail etcd-tls "etcd over https not healthy: $(tail -c 400 "$T_TMP/tls.log")"
	else
		run_test tls tls "https://127.0.0.1:$TC" "$CERTS"
	fi
fi

# Three members.
read -r C0 P0 C1 P1 C2 P2 <<<"$(free_ports 6)"
cluster="m0=http://127.0.0.1:$P0,m1=http://127.0.0.1:$P1,m2=http://127.0.0.1:$P2"
start_member m0 "$C0" "$P0" "$cluster" "godwit-test-$$-cluster"; pid0=$LAST_PID
start_member m1 "$C1" "$P1" "$cluster" "godwit-test-$$-cluster"; pid1=$LAST_PID
start_member m2 "$C2" "$P2" "$cluster" "godwit-test-$$-cluster"; pid2=$LAST_PID
for c in "$C0" "$C1" "$C2"; do
	if ! wait_healthy "$c" 30; then
		t_fail etcd-cluster "member 127.0.0.1:$c not healthy after 30 s: $(tail -c 400 "$T_TMP/m0.log")"
		exit 0
	fi
done
# The leader is killed, the hardest case: the client's first URL is the leader's, and
# writes must wait for the election.
pids=("$pid0" "$pid1" "$pid2")
ports=("$C0" "$C1" "$C2")
lead=
for i in 0 1 2; do
	st=$(curl -s --max-time 2 -X POST -d '{}' "http://127.0.0.1:${ports[i]}/v3/maintenance/status")
	[ -n "$st" ] && [ "$(jq -r '.leader' <<<"$st")" = "$(jq -r '.header.member_id' <<<"$st")" ] &&
		lead=$i
done
if [ -z "$lead" ]; then
	t_fail etcd-cluster "no member says it is the leader"
	exit 0
fi
urls=http://127.0.0.1:${ports[lead]}
for i in 0 1 2; do [ "$i" = "$lead" ] || urls=$urls,http://127.0.0.1:${ports[i]}; done
echo "# killing the leader m$lead (pid ${pids[lead]})" >&2
run_test cluster cluster "$urls" "${pids[lead]}"
exit 0
