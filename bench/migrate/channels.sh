#!/bin/bash
# bench/migrate/channels.sh [GODWIT [RUNS]]: the test guest (1 GiB, memtest rewriting
# 512 MiB at 100 MiB/s) migrated over loopback TCP with godwit migrate --channels N,
# N = $CHANS (default "1 2 4") alternating, RUNS rounds (default 3); one line per run:
# total, downtime, rounds, round 1's rate and size, and the load average before it
# (docs/migration.md, "Channels").  The destination's environment is this one's
# (e.g. GODWIT_UFFD_PLACE=off).
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
G=${1:-$ROOT/build/godwit} RUNS=${2:-3}
E=$(dirname "$G")/guest/godwit-guest.elf
T=$(mktemp -d /tmp/chan-bench.XXXX)
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for ((i = 0; i < RUNS; i++)); do
  for n in ${CHANS:-1 2 4}; do
    rm -f $T/*.api; P=$(port)
    timeout 120 $G run --incoming tcp:127.0.0.1:$P --api $T/d.api >$T/d.out 2>$T/d.err &
    D=$!
    timeout 120 $G run --kernel $E --api $T/s.api --mem 1G --cmdline 'workload=mem mem=512 rate=100 report=500' >$T/s.out 2>$T/s.err &
    S=$!
    for ((k = 0; k < 100; k++)); do [ "$(grep -c '^memtest: t=' $T/s.out)" -ge 3 ] && break; sleep 0.1; done
    L=$(cut -d' ' -f1 /proc/loadavg)
    timeout 60 $G migrate --api $T/s.api --to tcp:127.0.0.1:$P --channels $n --json >$T/m.json 2>$T/m.err
    echo "channels=$n rc=$? load=$L $(jq -r '"total_ms=\(.total_ms) downtime_ms=\(.downtime_ms) rounds=\(.rounds) r1_MiBps=\(.history[0].bytes/.history[0].ms*1000/1048576|floor) r1_MiB=\(.history[0].bytes/1048576|floor)"' $T/m.json)"
    $G shutdown --api $T/d.api >/dev/null 2>&1; wait $S $D 2>/dev/null
  done
done
rm -rf $T
