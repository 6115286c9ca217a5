#!/bin/bash
# tests/hwhost/build-l1.sh [OUTDIR] - builds the emulated hardware-virtualization host
# ("L1") that tests/hwhost/run.sh boots under QEMU TCG:
#   OUTDIR/vmlinuz            Debian's generic kernel (linux-image-amd64; it has 9p)
#   OUTDIR/initramfs.cpio.gz  busybox-static, kvm-amd, virtio, 9p, ext4 and network modules,
#                             tests/hwhost/l1-init as /init
# OUTDIR defaults to build/hwhost.  Idempotent: the .deb is cached (build/cache/debs) and
# extracted once; the initramfs is rebuilt only when one of its inputs changed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/linux-guest.sh
source "$HERE/../../scripts/linux-guest.sh"
lg_log() { echo "hwhost-build: $*" >&2; }

# In insmod order (each after what it depends on; dependencies are added if missing).
L1_MODULES="irqbypass kvm ccp kvm-amd virtio_ring virtio virtio_pci_modern_dev
	virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p virtio_blk crc16
	mbcache jbd2 crc32c_generic ext4 tun llc stp bridge veth sch_netem"

out=${1:-$LG_ROOT/build/hwhost}
mkdir -p "$out"
out=$(cd "$out" && pwd)
t0=$SECONDS

pkg=$(lg_resolve_pkg linux-image-amd64 'linux-image-[0-9][^ ]*-amd64')
deb=$(lg_fetch_deb "$pkg")
lg_prune_debs "$deb" 'linux-image-[0-9]*-amd64_*.deb' '*-cloud-amd64_*'
pkgdir=$out/$pkg
lg_extract_deb "$deb" "$pkgdir"
for d in "$out"/linux-image-*; do
	[ "$d" = "$pkgdir" ] || rm -rf "$d"
done
kver=$(lg_kver "$pkgdir")
[ -n "$kver" ] || lg_die "no lib/modules in $pkgdir"
if lg_newer "$out/vmlinuz" "$pkgdir/.extracted"; then
	cp "$pkgdir/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
	lg_log "L1 kernel $kver -> $out/vmlinuz"
fi

bb=$(lg_busybox)
init=$HERE/l1-init
if lg_newer "$out/initramfs.cpio.gz" "$pkgdir/.extracted" "$init" "$bb" "${BASH_SOURCE[0]}" \
	"$LG_ROOT/scripts/linux-guest.sh"; then
	stage=$out/initramfs
	rm -rf "$stage"
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,host,lib/modules}
	cp "$bb" "$stage/bin/busybox"
	cp "$init" "$stage/init"
	chmod 0755 "$stage/init"
	echo "$kver" >"$stage/etc/godwit-kernel"
	# shellcheck disable=SC2086
	lg_install_modules "$pkgdir/lib/modules/$kver" "$stage/lib/modules" $L1_MODULES
	lg_pack_initramfs "$stage" "$out/initramfs.cpio.gz"
	lg_log "L1 initramfs ($(wc -l <"$stage/lib/modules/load.order") modules) -> $out/initramfs.cpio.gz"
fi
lg_log "ready in $out ($((SECONDS - t0)) s)"
