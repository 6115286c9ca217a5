#!/bin/bash
# Tier 1: mutual TLS on the migration channel, and strays that change nothing
# (docs/migration.md, "Security").  Credentials from tests/kvm/mkcerts.py (CA A
# signs src, dst, wrongname, expired, cnonly; CA B signs otherca).
#
# Options: plain TCP beyond loopback is refused without --insecure, on both
# ends (exit 2); --insecure is accepted and logged; a missing --tls-dir file
# and an expired own certificate are named before anything starts.
#
# Twice, on loopback TCP and between two network namespaces (a veth pair,
# 198.18.9.1 and .2): one source VM (test guest, memtest) and one TLS
# destination (--tls-dir dst --tls-peer src.godwit.test).  Each of these
# connections must fail with its own clear error, at the source (godwit migrate exits 1, the
# VM keeps running there with memtest errors=0) and in the destination's log
# ("dropped", and the destination keeps waiting):
#   otherca    a godwit source whose certificate CA B signed
#   wrongname  a godwit source whose certificate names other.godwit.test
#   peername   a godwit source that requires the name wrong.godwit.test
#   plain      a godwit source without --tls-dir (told "mutual TLS only";
#              between namespaces it must say --insecure to even try)
#   nocert     openssl s_client without a certificate
#   expired    openssl s_client with an expired certificate from CA A
#   garbage    a plain TCP peer sending text
# then the real migration (cnonly: the name in the CN only; on loopback queued
# behind a peer that connected first and stays silent) completes, the
# guest's memory verified at the destination, whose migrate-status names the
# TLS 1.3 session.  A plain UNIX-socket destination: its socket is 0600, a
# peer of another uid is refused by SO_PEERCRED (dropped, still waiting), and
# a TLS source is told the destination does not speak TLS.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"

N=migrate-tls
t_need_guest $N || exit 0
C=$T_TMP/certs
python3 "$ROOT/tests/kvm/mkcerts.py" "$C" || { t_fail $N "mkcerts.py failed"; exit 0; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- options --------------------------------------------------------------------------------
t_expect $N-incoming-insecure-refused 2 'reachable from other hosts.*--tls-dir.*--insecure' \
	"$GODWIT" run --incoming tcp:198.18.0.1:9 --api "$T_TMP/x.sock"
t_expect $N-migrate-insecure-refused 2 'not on this host.*--tls-dir.*--insecure' \
	"$GODWIT" migrate --api "$T_TMP/none.sock" --to tcp:198.18.0.1:9
t_expect $N-tls-dir-missing 1 'cannot read .*/nowhere/ca.pem' \
	"$GODWIT" run --incoming "tcp:127.0.0.1:$(free_port)" --api "$T_TMP/y.sock" --tls-dir "$T_TMP/nowhere"
t_expect $N-own-cert-expired 1 'cert.pem .*CN = src.godwit.test.* expired on' \
	"$GODWIT" migrate --api "$T_TMP/none.sock" --to tcp:127.0.0.1:9 --tls-dir "$C/expired"
t_expect $N-peer-needs-dir 2 'tls-peer needs --tls-dir' \
	"$GODWIT" run --incoming tcp:127.0.0.1:9 --api "$T_TMP/z.sock" --tls-peer x
D_AT="tcp:0.0.0.0:$(free_port)" start_dst ins --insecure
if grep -q 'waiting for an incoming migration on tcp:0.0.0.0:[0-9]* (insecure: no TLS, --insecure)' "$D_ERR"; then
	t_pass $N-insecure-accepted
else
	t_fail $N-insecure-accepted "$(tail -c 300 "$D_ERR")"
fi
kill_pid "$D_PID"

# ---- strays at a TLS destination, then the real migration ----------------------------------------
# The destination and source on loopback (MODE lo), or each in its own network namespace
# joined by a veth pair, 198.18.9.1 (host A: the source) and 198.18.9.2 (host B) (MODE netns).
NS_A=gwt-a-$$ NS_B=gwt-b-$$
trap 't_netns_del "$NS_A" "$NS_B"; t_cleanup' EXIT
setup_netns() {
	ip netns add "$NS_A" && ip netns add "$NS_B" &&
		ip -n "$NS_A" link set lo up && ip -n "$NS_B" link set lo up &&
		ip -n "$NS_A" link add vA type veth peer name vB netns "$NS_B" &&
		ip -n "$NS_A" addr add 198.18.9.1/24 dev vA && ip -n "$NS_B" addr add 198.18.9.2/24 dev vB &&
		ip -n "$NS_A" link set vA up && ip -n "$NS_B" link set vB up
}

# dropped CASE DST_REGEX: the destination logged one more dropped connection, matching
# DST_REGEX, within 15 s, and still waits (else WHY).
dropped() {
	local i n
	WHY=
	for ((i = 0; i < 150; i++)); do
		n=$(grep -c 'was dropped' "$DST_ERR")
		[ "$n" -gt "$drops" ] && break
		sleep 0.1
	done
	if [ "$n" -le "$drops" ]; then
		WHY="the destination logged no dropped connection: $(tail -c 300 "$DST_ERR")"
		return 1
	fi
	drops=$n
	if ! grep 'was dropped' "$DST_ERR" | tail -n 1 | grep -qE "$2"; then
		WHY="the destination's log lacks /$2/: $(grep 'was dropped' "$DST_ERR" | tail -n 1)"
		return 1
	fi
	if ! kill -0 "$DST_PID" 2>/dev/null || [ -S "$DST_SOCK" ]; then
		WHY="the destination is not waiting any more: $(tail -c 300 "$DST_ERR")"
		return 1
	fi
	return 0
}
# refused CASE SRC_REGEX DST_REGEX MIGRATE-OPTIONS...: godwit migrate with these options
# exits 1 saying SRC_REGEX, the VM runs on at the source, the destination dropped it.
refused() {
	local c=$M-$1 sre=$2 dre=$3 rc
	shift 3
	timeout 60 "$GODWIT" migrate -q --api "$S_SOCK" --to "$DST_ADDR" "$@" >"$T_TMP/$c.mig" 2>&1
	rc=$?
	if [ $rc -ne 1 ] || ! grep -qE "$sre" "$T_TMP/$c.mig"; then
		t_fail "$N-$c" "migrate exit $rc (expected 1, /$sre/): $(tail -c 400 "$T_TMP/$c.mig")"
	elif ! dropped "$c" "$dre"; then
		t_fail "$N-$c" "$WHY"
	elif ! src_ok "$S_PID" "$S_SOCK" "$S_OUT"; then
		t_fail "$N-$c" "the source after the refusal: $WHY"
	else
		t_pass "$N-$c"
		echo "# $c: source: $(grep -a 'migrate:' "$T_TMP/$c.mig" | tail -n 1 | cut -c 1-220)"
		echo "#    destination: $(grep 'was dropped' "$DST_ERR" | tail -n 1 | cut -c 1-220)"
	fi
}
# stray CASE DST_REGEX CMD...: a foreign peer (CMD, on host A) connects; the destination
# drops it.
stray() {
	local c=$M-$1 dre=$2
	shift 2
	timeout 20 "${PFX[@]}" "$@" </dev/null >"$T_TMP/$c.peer" 2>&1
	if ! dropped "$c" "$dre"; then
		t_fail "$N-$c" "$WHY"
	else
		t_pass "$N-$c"
		echo "# $c: destination: $(grep 'was dropped' "$DST_ERR" | tail -n 1 | cut -c 1-220)"
	fi
}

# tls_strays MODE: the refusals, then the real migration (cnonly: the name in its CN only).
tls_strays() {
	local rc src_rc st plain=() host=127.0.0.1
	M=$1 PFX=() drops=0
	if [ "$M" = netns ]; then
		if ! setup_netns; then
			t_fail "$N-$M" "cannot build the two namespaces"
			return
		fi
		PFX=(ip netns exec "$NS_A") host=198.18.9.2
		plain=(--insecure)   # the stream would leave the host: it must be asked for
	fi
	if ! start_src "$M.src"; then
		t_fail "$N-$M" "the source VM did not start: $(tail -c 400 "$S_ERR")"
		return
	fi
	[ "$M" = netns ] && PFX=(ip netns exec "$NS_B")
	if ! D_AT="tcp:$host:$(free_port)" start_dst "$M.dst" --tls-dir "$C/dst" \
		--tls-peer src.godwit.test; then
		t_fail "$N-$M" "the destination did not start: $(tail -c 300 "$D_ERR")"
		end_vm
		return
	fi
	[ "$M" = netns ] && PFX=(ip netns exec "$NS_A")
	DST_PID=$D_PID DST_ERR=$D_ERR DST_SOCK=$D_SOCK DST_OUT=$D_OUT DST_ADDR=$D_ADDR
	HOSTPORT=${DST_ADDR#tcp:}
	refused otherca 'the destination refused our certificate' \
		"the source's certificate .*CN = src.godwit.test.* is not signed by our CA" \
		--tls-dir "$C/otherca"
	refused wrongname 'the destination refused our certificate' \
		"the source's certificate .*CN = other.godwit.test.* does not name src.godwit.test" \
		--tls-dir "$C/wrongname"
	refused peername \
		"the destination's certificate .*CN = dst.godwit.test.* does not name wrong.godwit.test" \
		'refused our certificate|closed the connection during the TLS handshake' \
		--tls-dir "$C/src" --tls-peer wrong.godwit.test
	refused plain 'mutual TLS only: give godwit migrate --tls-dir' 'plain godwit stream, not TLS' \
		"${plain[@]}"
	stray nocert 'the source sent no certificate' \
		openssl s_client -connect "$HOSTPORT" -CAfile "$C/src/ca.pem" -verify_return_error
	stray expired "the source's certificate .*CN = src.godwit.test.* expired on" \
		openssl s_client -connect "$HOSTPORT" -CAfile "$C/src/ca.pem" \
		-cert "$C/expired/cert.pem" -key "$C/expired/key.pem"
	stray garbage 'the peer does not speak TLS' \
		python3 -c 'import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); s.sendall(b"hello godwit\n"); s.recv(100)' \
		"$host" "${HOSTPORT##*:}"

	if [ "$M" = lo ]; then
		# A peer that connects first and says nothing holds the destination for its
		# handshake time-out (10 s); the real source, queued behind it, still gets in.
		timeout 20 python3 -c 'import socket, sys, time; s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); print("connected", flush=True); time.sleep(15)' \
			"$host" "${HOSTPORT##*:}" >"$T_TMP/silent.out" 2>&1 &
		# The real source must come second: wait until the silent peer is in.
		t_wait_for "$T_TMP/silent.out" '^connected' 10 ||
			t_fail "$N-$M-silent-first" "the silent peer did not connect: $(cat "$T_TMP/silent.out")"
	fi
	timeout 60 "$GODWIT" migrate --api "$S_SOCK" --to "$DST_ADDR" --tls-dir "$C/cnonly" \
		--tls-peer dst.godwit.test >"$T_TMP/$M.real.mig" 2>&1
	rc=$?
	if [ "$M" = lo ] && ! grep 'was dropped' "$DST_ERR" | tail -n 1 | grep -q 'timed out'; then
		t_fail "$N-$M-silent-first" "the silent peer was not dropped for its time-out: $(grep 'was dropped' "$DST_ERR" | tail -n 1)"
	elif [ "$M" = lo ]; then
		t_pass "$N-$M-silent-first"
	fi
	wait_exit "$S_PID" 15
	src_rc=$?
	if [ $rc -ne 0 ] || [ $src_rc -ne 6 ]; then
		t_fail "$N-$M-after-strays" "migrate exit $rc, source exit $src_rc (expected 0, 6): $(tail -c 400 "$T_TMP/$M.real.mig") dst: $(tail -c 300 "$DST_ERR")"
	elif ! src_ok "$DST_PID" "$DST_SOCK" "$DST_OUT"; then
		t_fail "$N-$M-after-strays" "at the destination: $WHY"
	else
		t_pass "$N-$M-after-strays"
		echo "# $M: $(grep -a 'completed\|channel' "$T_TMP/$M.real.mig" | tr '\n' ' ')"
	fi
	st=$(mstat "$DST_SOCK")
	if [[ $(jfield "$st" tls) == "TLSv1.3 TLS_AES_128_GCM_SHA256, peer "*"CN = src.godwit.test" ]] &&
		[ "$(jq -r .insecure <<<"$st" 2>/dev/null)" = false ] &&
		grep -q '^channel: TLSv1.3' "$T_TMP/$M.real.mig"; then
		t_pass "$N-$M-session-shown"
	else
		t_fail "$N-$M-session-shown" "migrate-status at the destination: $st; migrate: $(cat "$T_TMP/$M.real.mig")"
	fi
	end_vm "$DST_PID" "$DST_SOCK"
	PFX=()
}
tls_strays lo
tls_strays netns

# ---- a plain UNIX-socket destination -----------------------------------------------------------
M=unix
if ! start_src src2; then
	t_fail $N-unix "the source VM did not start: $(tail -c 400 "$S_ERR")"
	exit 0
fi
start_dst unix || { t_fail $N-unix "the destination did not start: $(tail -c 300 "$D_ERR")"; exit 0; }
DST_PID=$D_PID DST_ERR=$D_ERR DST_SOCK=$D_SOCK DST_OUT=$D_OUT DST_ADDR=$D_ADDR drops=0
msock=${D_ADDR#unix:}
mode=$(stat -c %a "$msock")
if [ "$mode" = 600 ]; then t_pass $N-unix-0600; else t_fail $N-unix-0600 "the socket's mode is $mode"; fi
# Opened up by hand, the socket still takes no other user: SO_PEERCRED.
chmod 711 "$T_TMP"
chmod 666 "$msock"
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \
	'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"x"); s.recv(10)' \
	"$msock" >"$T_TMP/other-uid.out" 2>&1
n=0
for ((i = 0; i < 100; i++)); do
	grep -q 'uid 65534 connected, but only root may migrate here' "$DST_ERR" && { n=1; break; }
	sleep 0.1
done
if [ $n = 1 ] && kill -0 "$DST_PID" 2>/dev/null; then
	t_pass $N-unix-peercred
else
	t_fail $N-unix-peercred "no refusal of uid 65534 logged, or the destination left: $(tail -c 300 "$DST_ERR"); peer: $(cat "$T_TMP/other-uid.out")"
fi
refused tls-to-plain 'the destination does not speak TLS' 'not a godwit stream|GODWIT|magic|preamble' \
	--tls-dir "$C/src"
kill_pid "$DST_PID"
end_vm

san=$(sanitizer "$T_TMP"/*.err)
if [ -n "$san" ]; then t_fail $N-sanitizers "$san"; else t_pass $N-sanitizers; fi
exit 0
