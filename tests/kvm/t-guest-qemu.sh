#!/bin/bash
# Tier 1, differential: the test guest's virtio drivers against QEMU's
# reference virtio-pci devices (disk pattern verified from the host,
# read-only disk, rng, net echo), so a godwit failure can be told apart from
# a guest-driver one.
# asan: no (QEMU is the VMM here)
. "$(dirname "$0")/../lib.sh"
t_need_kvm guest-qemu || exit 0
exec bash "$ROOT/guest/qemu-test.sh"
