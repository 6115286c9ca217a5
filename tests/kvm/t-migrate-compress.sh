#!/bin/bash
# Tier 1: compression of the memory pages on the link (godwit migrate --compress,
# docs/stream-format.md "RAM v2"), the test guest's memory verified on the
# destination in every case (lib-migrate.sh's check_all: the report, the source
# exits 6, a full verification pass and a new generation there, errors=0).
# The guest: `workload=mem mem=32 rate=20`, its pages filled with prose
# (fill=text: compresses) or xorshift streams (fill=random: does not).
#
#   compress-zstd-tls      --compress zstd under mutual TLS over loopback: the
#                          report's compress shows sections sent compressed, the
#                          page data at most half its size
#   compress-off-text      --compress off over loopback (plain, unix socket: pages
#                          sent from guest memory without a CRC): none compressed
#                          (COMPRESS_CASES="zstd-text zstd-random" also runs zstd over
#                          plain loopback, text and random pages)
#   compress-lag           --compress zstd, 128 MiB of prose, to a destination slowed down
#                          to 100 MiB/s in pre-copy: the pause stays within what the source
#                          predicted + 100 ms (it waited for the destination's APPLIED)
#   compress-auto-link-text    --compress auto (the default) over a 200 Mbit/s link
#                          (two namespaces, tbf: tests/kvm/lib-link.sh) that the
#                          writer waits on: auto switched compression on
#                          (switches >= 1, sections > 0), data at most half its size
#   compress-auto-link-random  the same with random pages: auto sampled them and left
#                          them alone (what it compressed, if anything, is under a tenth
#                          of the stream: a few small late sections of the guest's own
#                          compressible pages may be)
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib-vm.sh"
. "$(dirname "$0")/lib-migrate.sh"
. "$(dirname "$0")/lib-link.sh"

N=migrate-compress
trap 'link_down; t_cleanup' EXIT
t_need_guest $N || exit 0
T0=$(date +%s.%N)
want() { t_want COMPRESS_CASES "$1"; }

# zcheck JSON SPEC: the report's compress object against SPEC (python expression over
# mode, sections, bytes_in, bytes_out, switches, and the report's bytes: the whole
# stream); prints why it does not hold.
zcheck() {
	python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
z = r.get("compress")
if not isinstance(z, dict):
    print("the report has no compress object: " + json.dumps(r)[:300]); sys.exit(1)
env = dict(z, bytes=r.get("bytes", 0), downtime_ms=r.get("downtime_ms", 1e9),
           switch_expected_ms=r.get("switch_expected_ms", 0))
if not eval(sys.argv[2], {}, env):
    print("compress %s does not satisfy %s" % (json.dumps(z), sys.argv[2])); sys.exit(1)
PY
}

# zline NAME: the compress figures, one "#" line.
zline() {
	python3 - "$MIG_JSON" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); z = r.get("compress") or {}
bi, bo = z.get("bytes_in", 0), z.get("bytes_out", 0)
print("#   %s: compress %s: %d sections, %.1f MiB -> %.1f MiB (ratio %s), %d switches; total %s ms, %d MiB on the wire"
      % (sys.argv[2], z.get("mode"), z.get("sections", 0), bi / 1048576, bo / 1048576,
         "%.2f" % (bi / bo) if bo else "-", z.get("switches", 0), r.get("total_ms"), r.get("bytes", 0) >> 20))
print("#   %s: %s rounds, pause %s ms (predicted %s), phases %s" % (sys.argv[2], r.get("rounds"),
      r.get("downtime_ms"), r.get("switch_expected_ms"), json.dumps(r.get("phases_ms"))))
PY
}

# loop_case NAME FILL SPEC MIGRATE_ARGS...: a guest with FILL pages over loopback
# (MIG_TRANSPORT: unix, or tls), migrated with MIGRATE_ARGS; memory verified, SPEC holds.
loop_case() {
	local name=$1 fill=$2 spec=$3 start why
	shift 3
	start=$(date +%s.%N)
	CMDLINE="workload=mem mem=32 rate=20 fill=$fill report=200" start_src "$name.src" --cpus 1
	if ! start_dst "$name.dst"; then
		t_fail "$name" "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill_pid "$S_PID"
		return
	fi
	mapfile -t tls < <(mig_tls src)
	migrate "$name" "$D_ADDR" "${tls[@]}" "$@"
	if ! check_all "$S_PID" $((32 * 256)) 20; then
		t_fail "$name" "$WHY"
	elif ! why=$(zcheck "$MIG_JSON" "$spec"); then
		t_fail "$name" "$why"
	else
		t_pass "$name"
	fi
	zline "$name"
	echo "#   destination: $D_LAST; case took $(elapsed "$start") s"
	kill_pid "$S_PID"
	kill_pid "$D_PID"
}

[[ " ${COMPRESS_CASES:-} " == *" zstd-text "* ]] && loop_case $N-zstd-text text \
	'mode == "zstd" and sections > 0 and bytes_out * 2 <= bytes_in' --compress zstd
[[ " ${COMPRESS_CASES:-} " == *" zstd-random "* ]] && loop_case $N-zstd-random random \
	'mode == "zstd" and bytes_out * 10 >= bytes_in * 9' --compress zstd
want zstd-tls && MIG_TRANSPORT=tls loop_case $N-zstd-tls text \
	'mode == "zstd" and sections > 0 and bytes_out * 2 <= bytes_in' --compress zstd
want off-text && loop_case $N-off-text text 'mode == "off" and sections == 0' --compress off

# ---- a destination behind the source ----------------------------------------------------------
# lag: 128 MiB of prose (155:1 compressed) to a destination that applies pre-copy's pages at
# 100 MiB/s (GODWIT_TEST_SLOW_APPLY_US_PER_MIB=10000: it sleeps 10 ms a MiB; not in the
# pause): what the socket buffers hold ahead of it is tens of MiB of pages.  The source
# must wait for the destination's APPLIED before it pauses (docs/migration.md, "How far
# behind the destination is"), so the pause is what it predicted: at most
# switch_expected_ms + 100 ms (without the acknowledgements: ~200-500 ms over), and the
# source said it waited.
if want lag; then
	name=$N-lag start=$(date +%s.%N)
	CMDLINE="workload=mem mem=128 rate=20 fill=text report=200" start_src "$name.src" --cpus 1
	PFX=(env GODWIT_TEST_SLOW_APPLY_US_PER_MIB=10000)
	start_dst "$name.dst"
	rc=$?
	PFX=()
	if [ $rc -ne 0 ]; then
		t_fail "$name" "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill_pid "$S_PID"
	else
		migrate "$name" "$D_ADDR" --compress zstd
		if ! check_all "$S_PID" $((128 * 256)) 20; then
			t_fail "$name" "$WHY"
		elif ! why=$(zcheck "$MIG_JSON" 'sections > 0 and bytes_out * 10 <= bytes_in and downtime_ms <= switch_expected_ms + 100'); then
			t_fail "$name" "$why; phases $(jq -c .phases_ms "$MIG_JSON"), rounds $(jget "$MIG_JSON" rounds)"
		elif ! grep -q "the destination was [0-9]* ms behind" "$S_ERR"; then
			t_fail "$name" "the source did not wait for the destination: $(grep -a migrate: "$S_ERR" | tail -c 600)"
		else
			t_pass "$name"
		fi
		zline "$name"
		echo "#   $(grep -a -m1 -o 'the destination was [0-9]* ms behind.*' "$S_ERR"); case took $(elapsed "$start") s"
		kill_pid "$S_PID"
		kill_pid "$D_PID"
	fi
fi

# ---- auto over a link the writer waits on ---------------------------------------------------
# link_case NAME FILL SPEC: the source in namespace A, the destination in B, plain TCP
# (--insecure) through the shaped link; --compress left at its default (auto).
PORT=7240
link_case() {
	local name=$1 fill=$2 spec=$3 start why
	start=$(date +%s.%N)
	PFX=(ip netns exec "$LINK_A")
	CMDLINE="workload=mem mem=32 rate=20 fill=$fill report=200" start_src "$name.src" --cpus 1
	PFX=(ip netns exec "$LINK_B")
	PORT=$((PORT + 1))
	if ! D_AT="tcp:$LINK_IP_B:$PORT" start_dst "$name.dst" --insecure; then
		PFX=()
		t_fail "$name" "the destination is not waiting: $(tail -c 300 "$D_ERR")"
		kill_pid "$S_PID"
		return
	fi
	PFX=()
	migrate "$name" "$D_ADDR" --insecure
	if ! check_all "$S_PID" $((32 * 256)) 20; then
		t_fail "$name" "$WHY"
	elif ! why=$(zcheck "$MIG_JSON" "$spec"); then
		t_fail "$name" "$why"
	else
		t_pass "$name"
	fi
	zline "$name"
	echo "#   destination: $D_LAST; case took $(elapsed "$start") s"
	kill_pid "$S_PID"
	kill_pid "$D_PID"
}

if want auto-link-text || want auto-link-random; then
	if ! link_up "gwt-zc-$$" 2>"$T_TMP/link.err" || ! link_shape 200 2>>"$T_TMP/link.err"; then
		t_fail $N-auto-link "cannot build the shaped link: $(head -c 300 "$T_TMP/link.err")"
	else
		want auto-link-text && link_case $N-auto-link-text text \
			'mode == "auto" and switches >= 1 and sections > 0 and bytes_out * 2 <= bytes_in'
		want auto-link-random && link_case $N-auto-link-random random \
			'mode == "auto" and bytes_in * 10 < bytes'
	fi
fi
echo "# t-migrate-compress: $(elapsed "$T0") s in all"
