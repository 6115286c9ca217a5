#!/bin/bash
# scripts/linux-guest.sh OUTDIR - builds the Linux test guest from Debian packages.
#
#   OUTDIR/vmlinuz             Debian's stock cloud kernel (bzImage)
#   OUTDIR/initramfs.cpio.gz   busybox-static, the kernel's virtio modules, guest/linux/init
#                              as /init and guest/linux/memtest.c (static) as /bin/memtest,
#                              guest/linux/devbench.c as /bin/devbench
#   OUTDIR/modules/            the kernel's extracted modules tree (lib/modules/<kver>)
#   OUTDIR/memtest             the memory-integrity workload (also OUTDIR/ttydrain and
#                              OUTDIR/devbench, which bench/devices also runs as the host peer)
#
# Idempotent: the kernel .deb is downloaded once (cached in $GODWIT_DEB_CACHE, default
# build/cache/debs), extracted once per package version, and each output is rebuilt only
# when one of its inputs is newer.  The guest's command line options are documented in
# guest/linux/init.
#
# When sourced (as tests/hwhost/build-l1.sh does), this file only defines the lg_* helpers.

LG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LG_DEB_CACHE=${GODWIT_DEB_CACHE:-$LG_ROOT/build/cache/debs}

lg_log() { echo "linux-guest: $*" >&2; }
lg_die() { echo "linux-guest: error: $*" >&2; exit 1; }

# lg_apt_update: refreshes the package lists once per run (only if a look-up failed).
LG_APT_UPDATED=0
lg_apt_update() {
	[ "$LG_APT_UPDATED" = 1 ] && return 0
	LG_APT_UPDATED=1
	local sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	lg_log "refreshing apt package lists"
	timeout 300 $sudo apt-get update -qq >&2 || lg_log "apt-get update failed"
}

# lg_resolve_pkg META: prints the real package a metapackage (linux-image-cloud-amd64)
# depends on (linux-image-6.1.0-NN-cloud-amd64).  Falls back to the newest cached .deb
# when apt knows nothing (offline machine).
lg_resolve_pkg() {
	local meta=$1 pattern=$2 name
	name=$(timeout 60 apt-cache depends "$meta" 2>/dev/null |
		sed -n "s/^ *Depends: \($pattern\)\$/\1/p" | head -1)
	if [ -z "$name" ]; then
		lg_apt_update
		name=$(timeout 60 apt-cache depends "$meta" 2>/dev/null |
			sed -n "s/^ *Depends: \($pattern\)\$/\1/p" | head -1)
	fi
	if [ -z "$name" ]; then
		name=$(ls "$LG_DEB_CACHE" 2>/dev/null | sed -n "s/^\($pattern\)_.*\.deb\$/\1/p" |
			sort -V | tail -1)
		[ -n "$name" ] && lg_log "apt-cache knows no $meta; using cached $name"
	fi
	[ -n "$name" ] || lg_die "cannot resolve $meta (apt-cache depends $meta)"
	echo "$name"
}

# lg_fetch_deb PKG: prints the path of PKG's .deb in the cache, downloading it if needed.
lg_fetch_deb() {
	local pkg=$1 deb
	mkdir -p "$LG_DEB_CACHE"
	deb=$(ls "$LG_DEB_CACHE/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1)
	if [ -z "$deb" ]; then
		lg_log "downloading $pkg"
		_lg_download "$pkg" || { lg_apt_update; _lg_download "$pkg"; } ||
			lg_die "apt-get download $pkg failed"
		deb=$(ls "$LG_DEB_CACHE/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1)
		[ -n "$deb" ] || lg_die "apt-get download $pkg left no .deb in $LG_DEB_CACHE"
	fi
	echo "$deb"
}

_lg_download() {
	# (root's apt warns that _apt cannot write to the cache directory: harmless)
	(cd "$LG_DEB_CACHE" && timeout 600 apt-get download -q "$1" 2>&1 |
		grep -v -e 'unsandboxed as root' -e '^Get:' -e '^Fetched' >&2
	exit "${PIPESTATUS[0]}")
}

# lg_prune_debs KEEP GLOB [EXCLUDE]: removes cached .debs matching GLOB (but not EXCLUDE)
# other than KEEP, e.g. the previous kernel ABI's package after an update.
lg_prune_debs() {
	local keep=$1 glob=$2 exclude=${3:-} f
	for f in "$LG_DEB_CACHE"/$glob; do
		[ -f "$f" ] && [ "$f" != "$keep" ] || continue
		# shellcheck disable=SC2053 # EXCLUDE is a pattern
		[ -n "$exclude" ] && [[ $f == $exclude ]] && continue
		rm -f "$f"
	done
}

# lg_extract_deb DEB DIR: dpkg -x DEB into DIR once (a stamp records which .deb).
lg_extract_deb() {
	local deb=$1 dir=$2
	if [ -f "$dir/.extracted" ] && [ "$(cat "$dir/.extracted")" = "$(basename "$deb")" ]; then
		return 0
	fi
	lg_log "extracting $(basename "$deb")"
	rm -rf "$dir" && mkdir -p "$dir" || return 1
	dpkg -x "$deb" "$dir" || lg_die "dpkg -x $deb failed"
	basename "$deb" >"$dir/.extracted"
}

# lg_kver DIR: the kernel version of an extracted linux-image package.
lg_kver() {
	ls "$1/lib/modules" 2>/dev/null | head -1
}

# lg_find_module MODDIR NAME: prints the path of module NAME (- and _ are equivalent).
lg_find_module() {
	local moddir=$1 name=$2 a b
	a=${name//-/_}
	b=${name//_/-}
	find "$moddir/kernel" \( -name "$a.ko" -o -name "$a.ko.*" -o -name "$b.ko" -o -name "$b.ko.*" \
		-o -name "$name.ko" -o -name "$name.ko.*" \) -print -quit 2>/dev/null
}

# lg_is_builtin MODDIR NAME: true if NAME is built into the kernel (modules.builtin).
lg_is_builtin() {
	local a=${2//-/_} b=${2//_/-}
	grep -qE "/($a|$b)\.ko\$" "$1/modules.builtin" 2>/dev/null
}

# lg_module_depends FILE: prints FILE's dependencies, comma-separated (modinfo, or the
# .modinfo strings when modinfo is missing).
lg_module_depends() {
	local f=$1
	if command -v modinfo >/dev/null 2>&1; then
		modinfo -F depends "$f" 2>/dev/null
	else
		lg_module_cat "$f" | strings | sed -n 's/^depends=//p' | head -1
	fi
}

# lg_module_cat FILE: writes the (decompressed) module to stdout.
lg_module_cat() {
	case $1 in
	*.ko.xz) xz -dc "$1" ;;
	*.ko.zst) zstd -qdc "$1" ;;
	*.ko.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}

# lg_module_order MODDIR NAME...: prints "name path" lines for NAME... and their
# dependencies, each after everything it depends on.  Modules that are built in or absent
# are reported on stderr and skipped.
lg_module_order() {
	local moddir=$1
	shift
	local -A seen=()
	local -a order=()
	_lg_visit() {
		local n=${1//-/_} f d
		[ -n "${seen[$n]:-}" ] && return 0
		seen[$n]=1
		f=$(lg_find_module "$moddir" "$1")
		if [ -z "$f" ]; then
			if lg_is_builtin "$moddir" "$1"; then
				lg_log "module $1: built into the kernel, skipped"
			else
				lg_log "module $1: not in this kernel, skipped"
			fi
			return 0
		fi
		for d in $(lg_module_depends "$f" | tr ',' ' '); do
			_lg_visit "$d"
		done
		order+=("$n $f")
	}
	local m
	for m in "$@"; do _lg_visit "$m"; done
	unset -f _lg_visit
	printf '%s\n' "${order[@]}"
}

# lg_install_modules MODDIR DESTDIR NAME...: copies NAME... and their dependencies,
# decompressed, to DESTDIR/NAME.ko and writes DESTDIR/load.order (insmod order).
lg_install_modules() {
	local moddir=$1 dest=$2
	shift 2
	mkdir -p "$dest" || return 1
	: >"$dest/load.order"
	local name path
	while read -r name path; do
		[ -n "$name" ] || continue
		lg_module_cat "$path" >"$dest/$name.ko" || lg_die "cannot decompress $path"
		echo "$name" >>"$dest/load.order"
	done < <(lg_module_order "$moddir" "$@")
}

# lg_busybox: prints the path of a static busybox.
lg_busybox() {
	local b
	for b in /bin/busybox /usr/bin/busybox; do
		if [ -x "$b" ] && file -L "$b" 2>/dev/null | grep -q 'statically linked'; then
			echo "$b"
			return 0
		fi
	done
	# `file` may be missing: trust busybox-static's path.
	[ -x /bin/busybox ] && dpkg -S /bin/busybox 2>/dev/null | grep -q busybox-static &&
		{ echo /bin/busybox; return 0; }
	lg_die "no static busybox (apt-get install busybox-static)"
}

# lg_pack_initramfs DIR OUT: packs DIR as a gzipped newc cpio archive, atomically.
lg_pack_initramfs() {
	local dir=$1 out=$2
	(cd "$dir" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -6 >"$out.tmp" &&
		mv "$out.tmp" "$out"
}

# lg_newer OUT IN...: true if OUT is missing or any IN is newer than it.
lg_newer() {
	local out=$1 f
	shift
	[ -e "$out" ] || return 0
	for f in "$@"; do
		[ "$f" -nt "$out" ] && return 0
	done
	return 1
}

# The Linux guest's virtio modules (the cloud kernel builds them as modules).
LG_GUEST_MODULES="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	virtio_blk failover net_failover virtio_net virtio-rng"

lg_main() {
	set -euo pipefail
	local out=${1:-$LG_ROOT/build/linux}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	local t0=$SECONDS
	# One build at a time per OUTDIR (the checkout may be shared).
	exec 9>"$out/.lock"
	flock -w 600 9 || lg_die "$out is locked by another build"

	# 1. The kernel package.
	local pkg deb pkgdir kver
	pkg=$(lg_resolve_pkg linux-image-cloud-amd64 'linux-image-[0-9][^ ]*-cloud-amd64')
	deb=$(lg_fetch_deb "$pkg")
	lg_prune_debs "$deb" 'linux-image-[0-9]*-cloud-amd64_*.deb'
	pkgdir=$out/$pkg
	lg_extract_deb "$deb" "$pkgdir"
	# Drop trees of older kernel versions.
	local d
	for d in "$out"/linux-image-*; do
		[ "$d" = "$pkgdir" ] || rm -rf "$d"
	done
	kver=$(lg_kver "$pkgdir")
	[ -n "$kver" ] || lg_die "no lib/modules in $pkgdir"
	ln -sfn "$pkg/lib/modules/$kver" "$out/modules"
	if lg_newer "$out/vmlinuz" "$pkgdir/.extracted"; then
		cp "$pkgdir/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
		lg_log "kernel $kver -> $out/vmlinuz"
	fi

	# 2. The workload and its helper (static: the initramfs has no libc).
	local prog src
	for prog in memtest ttydrain devbench; do
		src=$LG_ROOT/guest/linux/$prog.c
		# memtest includes guest/pattern.h (the page format both test guests share).
		if lg_newer "$out/$prog" "$src" "$LG_ROOT/guest/pattern.h"; then
			lg_log "CC $src"
			${CC:-gcc} -static -O2 -std=gnu11 -Wall -Wextra -Werror -o "$out/$prog.tmp" "$src" &&
				mv "$out/$prog.tmp" "$out/$prog" || lg_die "building $prog failed"
		fi
	done

	# 3. The initramfs.
	local bb init=$LG_ROOT/guest/linux/init
	bb=$(lg_busybox)
	if lg_newer "$out/initramfs.cpio.gz" "$pkgdir/.extracted" "$out/memtest" "$out/ttydrain" \
		"$out/devbench" "$init" "$bb" \
		"${BASH_SOURCE[0]}"; then
		local stage=$out/initramfs
		rm -rf "$stage"
		mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib/modules}
		cp "$bb" "$stage/bin/busybox"
		cp "$init" "$stage/init"
		chmod 0755 "$stage/init"
		cp "$out/memtest" "$out/ttydrain" "$out/devbench" "$stage/bin/"
		echo "$kver" >"$stage/etc/godwit-kernel"
		# shellcheck disable=SC2086
		lg_install_modules "$pkgdir/lib/modules/$kver" "$stage/lib/modules" $LG_GUEST_MODULES
		lg_pack_initramfs "$stage" "$out/initramfs.cpio.gz"
		lg_log "initramfs ($(tr '\n' ' ' <"$stage/lib/modules/load.order")) -> $out/initramfs.cpio.gz"
	fi
	lg_log "ready in $out ($((SECONDS - t0)) s)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	lg_main "$@"
fi
