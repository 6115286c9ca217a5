#!/bin/bash
# Tier 1: on a terminal the console is raw and Ctrl-A x stops godwit (status 7).
. "$(dirname "$0")/../lib.sh"
t_need_kvm console-escape || exit 0
python3 "$ROOT/tests/kvm/console.py" "$GODWIT" "$GUEST_ELF"
