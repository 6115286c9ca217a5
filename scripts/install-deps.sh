#!/bin/bash
# Installs the Debian packages godwit needs to build and test; idempotent.
# (chromium: t-fleet-page.sh loads godwitd's page headless; about 390 MiB installed, 125 MB to download.)
set -euo pipefail
PKGS="build-essential pkg-config clang libclang-rt-14-dev libmicrohttpd-dev libjansson-dev libcurl4-openssl-dev libssl-dev openssl libseccomp-dev libcap-ng-dev libzstd-dev python3-cryptography
      qemu-system-x86 qemu-utils busybox-static cpio curl iproute2 acpica-tools kmod file jq
      etcd-server etcd-client python3-prometheus-client
      groff-base man-db lintian dpkg-dev systemd
      chromium bsdutils"
missing=()
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}" >&2
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
