#!/bin/bash
# Tier 1: bad input gets a clear message and the documented exit status,
# and the guest-initiated exits (poweroff, reset, triple fault) map to theirs.
. "$(dirname "$0")/../lib.sh"


# Tiny PVH images (32-bit ring 0 code) for the exits the test guest never takes.
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/s5.elf" 66ba040666b8003466eff4        # out 0x604 <- 0x3400
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/reset.elf" b0fee664f4                  # out 0x64 <- 0xfe
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/cf9.elf" 66baf90cb006eef4               # out 0xcf9 <- 0x06
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/ud2.elf" 0f0b                           # #UD, no IDT

# Usage errors (no KVM needed): status 2.
t_expect usage-no-kernel 2 'kernel is required' "$GODWIT" run
t_expect usage-unknown-opt 2 'unknown option --bogus' "$GODWIT" run --kernel x --bogus
t_expect usage-bad-cpus 2 'cpus 0' "$GODWIT" run --kernel x --cpus 0
t_expect usage-bad-mem 2 'not a size' "$GODWIT" run --kernel x --mem lots
t_expect usage-small-mem 2 'at least 32 MiB' "$GODWIT" run --kernel x --mem 1M
t_expect usage-bad-model 2 'cpu-model x86-64-v9' "$GODWIT" run --kernel x --cpu-model x86-64-v9
t_expect usage-bad-command 2 "unknown command 'frobnicate'" "$GODWIT" frobnicate
t_expect usage-name-not-utf8 2 'name is not valid UTF-8' "$GODWIT" run --kernel x --name $'web\xc3\x28'
t_expect usage-name-control 2 'name must not hold control characters' "$GODWIT" run --kernel x --name $'web\e[2J'
t_expect usage-incoming-timeout 2 'incoming-timeout soon: expected seconds' \
	"$GODWIT" run --incoming "unix:$T_TMP/x.sock" --api "$T_TMP/x.api" --incoming-timeout soon
t_expect usage-incoming-min-rate 2 'incoming-min-rate fast: expected bytes per second' \
	"$GODWIT" run --incoming "unix:$T_TMP/x.sock" --api "$T_TMP/x.api" --incoming-min-rate fast
t_expect usage-migrate-min-rate 2 'min-rate fast: expected bytes per second' \
	"$GODWIT" migrate --api "$T_TMP/x.api" --to "unix:$T_TMP/x.sock" --min-rate fast
t_expect usage-restore-incoming-opt 2 'overwrite is only for godwit run --incoming' \
	"$GODWIT" restore --from x --overwrite

# Bad kernels: status 1, before any KVM work.
t_expect kernel-missing 1 'cannot open kernel /nonexistent' "$GODWIT" run --kernel /nonexistent
head -c 100000 /dev/urandom >"$T_TMP/garbage"
t_expect kernel-corrupt 1 'not a Linux bzImage or an ELF' "$GODWIT" run --kernel "$T_TMP/garbage"
head -c 4097 "$T_TMP/s5.elf" >"$T_TMP/truncated.elf"
t_expect kernel-truncated 1 'cannot boot' "$GODWIT" run --kernel "$T_TMP/truncated.elf"
: >"$T_TMP/empty"
t_expect kernel-empty 1 'is empty' "$GODWIT" run --kernel "$T_TMP/empty"
t_expect initrd-missing 1 'cannot open initrd' "$GODWIT" run --kernel "$T_TMP/s5.elf" --initrd /nonexistent

# No /dev/kvm: a mount namespace with an empty /dev.
if unshare -m true 2>/dev/null; then
	t_expect no-kvm 1 'cannot open /dev/kvm' unshare -m bash -c \
		"mount -t tmpfs none /dev && exec '$GODWIT' run --kernel '$T_TMP/s5.elf'"
else
	t_fail no-kvm "cannot create a mount namespace to hide /dev/kvm (unshare -m)"
fi

t_need_kvm mem-beyond-host || exit 0
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
t_expect mem-beyond-host 1 'more than the host has available' \
	"$GODWIT" run --kernel "$T_TMP/s5.elf" --mem "$((avail_kib / 1024 + 4096))M"

t_expect exit-poweroff 0 - "$GODWIT" run --kernel "$T_TMP/s5.elf"
t_expect exit-reset-i8042 3 'reset' "$GODWIT" run --kernel "$T_TMP/reset.elf"
t_expect exit-reset-cf9 3 'reset' "$GODWIT" run --kernel "$T_TMP/cf9.elf"
t_expect exit-triple-fault 4 'triple fault.*' "$GODWIT" run --kernel "$T_TMP/ud2.elf"
if grep -q 'rip=0000000000100000' "$T_TMP/exit-triple-fault.err"; then
	t_pass exit-triple-fault-regs
else
	t_fail exit-triple-fault-regs "register dump lacks rip=0000000000100000: $(head -c 400 "$T_TMP/exit-triple-fault.err")"
fi
