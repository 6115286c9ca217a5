#!/bin/bash
# Tier 1: the test guest boots under godwit on /dev/kvm, reports the CPUs and
# memory it was given, runs the memory-integrity workload without error at
# several dirty rates, and its poweroff ends godwit with status 0.
. "$(dirname "$0")/../lib.sh"

# boot NAME CPUS MEM CMDLINE: run the guest to its poweroff; sets $log, $rc.
boot() {
	local name=$1 cpus=$2 mem=$3 cmdline=$4
	log=$T_TMP/$name.log
	timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --cpus "$cpus" --mem "$mem" \
		--cmdline "$cmdline" </dev/null >"$log" 2>&1
	rc=$?
}

# check_run NAME CPUS MEM_MIB: the usual assertions on $log and $rc.
check_run() {
	local name=$1 cpus=$2 mem_mib=$3 reports errs
	if [ "$rc" -ne 0 ]; then
		t_fail "$name" "exit status $rc; log tail: $(tail -c 600 "$log")"; return
	fi
	if ! grep -q '^godwit-guest: boot' "$log"; then
		t_fail "$name" "no boot line"; return
	fi
	local line; line=$(grep -m1 '^godwit-guest: cpus=' "$log")
	local got_cpus got_mem
	got_cpus=$(sed -n 's/.*cpus=\([0-9]*\).*/\1/p' <<<"$line")
	got_mem=$(sed -n 's/.*mem_mib=\([0-9]*\).*/\1/p' <<<"$line")
	if [ "$got_cpus" != "$cpus" ]; then
		t_fail "$name" "guest saw cpus=$got_cpus, expected $cpus ($line)"; return
	fi
	# The memory map hides the 384 KiB legacy hole below 1 MiB.
	if [ -z "$got_mem" ] || [ "$got_mem" -lt $((mem_mib - 1)) ] || [ "$got_mem" -gt "$mem_mib" ]; then
		t_fail "$name" "guest saw mem_mib=$got_mem, expected ~$mem_mib ($line)"; return
	fi
	reports=$(grep -c '^memtest: t=' "$log")
	if [ "$reports" -lt 2 ]; then
		t_fail "$name" "only $reports memtest reports; log tail: $(tail -c 400 "$log")"; return
	fi
	errs=$(t_complete "$log" | grep -a '^memtest: t=' | tail -1 | sed -n 's/.*errors=\([0-9]*\).*/\1/p')
	if [ "$errs" != 0 ] || grep -q 'memtest: ERROR' "$log"; then
		t_fail "$name" "memtest errors: $(grep -m3 'memtest: ERROR\|errors=[1-9]' "$log")"; return
	fi
	if grep -q 'godwit-guest: EXCEPTION\|only [0-9]* of [0-9]* cpus' "$log"; then
		t_fail "$name" "$(grep -m2 'EXCEPTION\|cpus came online' "$log")"; return
	fi
	if ! grep -q '^godwit-guest: poweroff' "$log"; then
		t_fail "$name" "no poweroff line"; return
	fi
	t_pass "$name"
}

t_need_kvm guest-1cpu || exit 0
[ -f "$GUEST_ELF" ] || { t_fail guest-1cpu "test guest $GUEST_ELF not built"; exit 0; }

boot guest-1cpu 1 256M "workload=mem mem=64 rate=0 runtime=3"
check_run guest-1cpu 1 256

boot guest-1cpu-rate50 1 256M "workload=mem mem=128 rate=50 runtime=3"
check_run guest-1cpu-rate50 1 256
# At 50 MiB/s for ~2 s the guest must really have rewritten pages.
dirtied=$(t_complete "$log" | grep -a '^memtest: t=' | tail -1 | sed -n 's/.*dirtied=\([0-9]*\).*/\1/p')
if [ "${dirtied:-0}" -ge 6400 ]; then t_pass guest-dirty-rate
else t_fail guest-dirty-rate "dirtied=${dirtied:-none} pages after ~2 s at 50 MiB/s (want >= 6400: half the paced rate, allowing for a loaded host)"; fi

# As fast as it can (a rate above what a CPU writes) with text pages: the guest
# must still report, verify without error and power off at its runtime.
boot guest-text-max 1 256M "workload=mem mem=64 rate=100000 fill=text runtime=3 report=200"
check_run guest-text-max 1 256
dirtied=$(t_complete "$log" | grep -a '^memtest: t=' | tail -1 | sed -n 's/.*dirtied=\([0-9]*\).*/\1/p')
if [ "${dirtied:-0}" -ge 51200 ]; then t_pass guest-text-max-dirtied
else t_fail guest-text-max-dirtied "dirtied=${dirtied:-none} pages in ~2 s as fast as it can (want >= 51200: 100 MiB/s)"; fi
if grep -q 'bad value for fill' "$log"; then t_fail guest-fill-text "fill=text refused: $(grep -m1 'bad value' "$log")"
else t_pass guest-fill-text; fi

boot guest-2cpu 2 512M "workload=mem mem=128 rate=200 runtime=3"
check_run guest-2cpu 2 512
if grep -q '^godwit-guest: cpu 1 online' "$log"; then t_pass guest-2cpu-ap-online
else t_fail guest-2cpu-ap-online "the AP never came online: $(grep -m3 godwit-guest "$log")"; fi

# RAM above the 3 GiB hole: 5 GiB, memory from high RAM must be reported.
boot guest-5g 1 5G "workload=mem mem=64 runtime=2"
check_run guest-5g 1 5120

# The idle workload halts in ring 0 and must not burn a host core.
# cutime+cstime of this shell: CPU used by waited-for children.
c0=$(awk '{print $16+$17}' /proc/$$/stat)
( timeout 30 "$GODWIT" run --kernel "$GUEST_ELF" --cmdline "workload=idle runtime=3" \
	</dev/null >"$T_TMP/idle.log" 2>&1; echo $? >"$T_TMP/idle.rc" )
cpu=$(awk -v t="$(getconf CLK_TCK)" -v c0="$c0" '{print ($16+$17-c0)/t}' /proc/$$/stat)
rc=$(cat "$T_TMP/idle.rc")
idle_reports=$(grep -c '^idle: t=' "$T_TMP/idle.log")
if [ "$rc" -ne 0 ] || [ "$idle_reports" -lt 2 ]; then
	t_fail guest-idle "status $rc, $idle_reports idle reports: $(tail -c 300 "$T_TMP/idle.log")"
elif awk -v c="$cpu" 'BEGIN {exit !(c > 1.5)}'; then
	t_fail guest-idle "idle guest used ${cpu}s of CPU in ~3 s"
else
	t_pass guest-idle
fi
