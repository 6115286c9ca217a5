#!/bin/bash
# Tier 1: virtio-rng (--rng) feeds the test guest's polling driver: 64 KiB
# read, all 256 byte values seen, then poweroff with status 0.
. "$(dirname "$0")/../lib.sh"
t_need_kvm rng || exit 0
log=$T_TMP/rng.log
timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --mem 256M --rng \
	--cmdline "workload=rng rng_kib=64 runtime=2" </dev/null >"$log" 2>&1
rc=$?
line=$(grep -m1 '^rng: bytes=' "$log")
bytes=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$line")
distinct=$(sed -n 's/.*distinct_bytes=\([0-9]*\).*/\1/p' <<<"$line")
if [ "$rc" -ne 0 ]; then
	t_fail rng "exit status $rc: $(tail -c 400 "$log")"
elif [ "${bytes:-0}" -ne 65536 ] || [ "${distinct:-0}" -ne 256 ]; then
	t_fail rng "guest read '${line:-nothing}'"
else
	t_pass rng
fi
# Without --rng the guest finds no device and says so.
timeout 60 "$GODWIT" run --kernel "$GUEST_ELF" --mem 256M \
	--cmdline "workload=rng runtime=1" </dev/null >"$log" 2>&1
if grep -q 'rng: no usable virtio-rng device' "$log"; then t_pass rng-absent
else t_fail rng-absent "$(grep -m2 'rng' "$log")"; fi
