#!/bin/bash
# Tier 1: bad input gets a clear message and the documented exit status,
# and the guest-initiated exits (poweroff, reset, triple fault) map to theirs.
. "$(dirname "$0")/../lib.sh"

# expect NAME STATUS REGEX CMD...: run CMD, check its status and stderr (REGEX - : any).
expect() {
	local name=$1 want=$2 re=$3; shift 3
	local out=$T_TMP/$name.err rc
	timeout 30 "$@" </dev/null >"$T_TMP/$name.out" 2>"$out"; rc=$?
	if [ "$rc" -ne "$want" ]; then
		t_fail "$name" "exit status $rc, expected $want; stderr: $(head -c 300 "$out")"
	elif [ "$re" != - ] && ! grep -qE "$re" "$out"; then
		t_fail "$name" "stderr lacks /$re/: $(head -c 300 "$out")"
	else
		t_pass "$name"
	fi
}

# Tiny PVH images (32-bit ring 0 code) for the exits the test guest never takes.
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/s5.elf" 66ba040666b8003466eff4        # out 0x604 <- 0x3400
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/reset.elf" b0fee664f4                  # out 0x64 <- 0xfe
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/cf9.elf" 66baf90cb006eef4               # out 0xcf9 <- 0x06
python3 "$ROOT/tests/kvm/mkelf.py" "$T_TMP/ud2.elf" 0f0b                           # #UD, no IDT

# Usage errors (no KVM needed): status 2.
expect usage-no-kernel 2 'kernel is required' "$GODWIT" run
expect usage-unknown-opt 2 'unknown option --bogus' "$GODWIT" run --kernel x --bogus
expect usage-bad-cpus 2 'cpus 0' "$GODWIT" run --kernel x --cpus 0
expect usage-bad-mem 2 'not a size' "$GODWIT" run --kernel x --mem lots
expect usage-small-mem 2 'at least 32 MiB' "$GODWIT" run --kernel x --mem 1M
expect usage-bad-model 2 'cpu-model x86-64-v9' "$GODWIT" run --kernel x --cpu-model x86-64-v9
expect usage-bad-command 2 "unknown command 'frobnicate'" "$GODWIT" frobnicate
expect usage-name-not-utf8 2 'name is not valid UTF-8' "$GODWIT" run --kernel x --name $'web\xc3\x28'
expect usage-name-control 2 'name must not hold control characters' "$GODWIT" run --kernel x --name $'web\e[2J'
expect usage-incoming-timeout 2 'incoming-timeout soon: expected seconds' \
	"$GODWIT" run --incoming "unix:$T_TMP/x.sock" --api "$T_TMP/x.api" --incoming-timeout soon
expect usage-incoming-min-rate 2 'incoming-min-rate fast: expected bytes per second' \
	"$GODWIT" run --incoming "unix:$T_TMP/x.sock" --api "$T_TMP/x.api" --incoming-min-rate fast
expect usage-migrate-min-rate 2 'min-rate fast: expected bytes per second' \
	"$GODWIT" migrate --api "$T_TMP/x.api" --to "unix:$T_TMP/x.sock" --min-rate fast
expect usage-restore-incoming-opt 2 'overwrite is only for godwit run --incoming' \
	"$GODWIT" restore --from x --overwrite

# Bad kernels: status 1, before any KVM work.
expect kernel-missing 1 'cannot open kernel /nonexistent' "$GODWIT" run --kernel /nonexistent
head -c 100000 /dev/urandom >"$T_TMP/garbage"
expect kernel-corrupt 1 'not a Linux bzImage or an ELF' "$GODWIT" run --kernel "$T_TMP/garbage"
head -c 4097 "$T_TMP/s5.elf" >"$T_TMP/truncated.elf"
expect kernel-truncated 1 'cannot boot' "$GODWIT" run --kernel "$T_TMP/truncated.elf"
: >"$T_TMP/empty"
expect kernel-empty 1 'is empty' "$GODWIT" run --kernel "$T_TMP/empty"
expect initrd-missing 1 'cannot open initrd' "$GODWIT" run --kernel "$T_TMP/s5.elf" --initrd /nonexistent

# No /dev/kvm: a mount namespace with an empty /dev.
if unshare -m true 2>/dev/null; then
	expect no-kvm 1 'cannot open /dev/kvm' unshare -m bash -c \
		"mount -t tmpfs none /dev && exec '$GODWIT' run --kernel '$T_TMP/s5.elf'"
else
	t_fail no-kvm "cannot create a mount namespace to hide /dev/kvm (unshare -m)"
fi

t_need_kvm mem-beyond-host || exit 0
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
expect mem-beyond-host 1 'more than the host has available' \
	"$GODWIT" run --kernel "$T_TMP/s5.elf" --mem "$((avail_kib / 1024 + 4096))M"

expect exit-poweroff 0 - "$GODWIT" run --kernel "$T_TMP/s5.elf"
expect exit-reset-i8042 3 'reset' "$GODWIT" run --kernel "$T_TMP/reset.elf"
expect exit-reset-cf9 3 'reset' "$GODWIT" run --kernel "$T_TMP/cf9.elf"
expect exit-triple-fault 4 'triple fault.*' "$GODWIT" run --kernel "$T_TMP/ud2.elf"
if grep -q 'rip=0000000000100000' "$T_TMP/exit-triple-fault.err"; then
	t_pass exit-triple-fault-regs
else
	t_fail exit-triple-fault-regs "register dump lacks rip=0000000000100000: $(head -c 400 "$T_TMP/exit-triple-fault.err")"
fi
