#!/bin/bash
# scripts/mkdeb.sh [BUILD [OUTDIR]] - builds OUTDIR/godwit_VERSION-1_amd64.deb (OUTDIR:
# BUILD, default build) from what `make` built in BUILD; `make deb` runs it.
# Debian's own tools, no debhelper: `make install` into a staging tree (PREFIX=/usr), then
# by hand what dh_strip, dh_installman, dh_installchangelogs, dh_shlibdeps, dh_md5sums
# and dh_builddeb would do.  So the package is made from the tree `make` already built
# and tested, in about a second, with no debian/rules that would build (or clean) it
# again.  The metadata's sources are in pkg/; lintian checks the result (t-package.sh).
#
# VERSION is `godwit --version`'s; the Debian revision is 1.  DEBFULLNAME/DEBEMAIL (else
# git's user.name/user.email, else the last commit's author) name the maintainer.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${1:-build}
OUT=${2:-$BUILD}
die() { echo "mkdeb: $*" >&2; exit 1; }
for t in dpkg-deb dpkg-shlibdeps strip gzip; do
	command -v "$t" >/dev/null || die "$t is missing (scripts/install-deps.sh installs it)"
done
[ -x "$BUILD/godwit" ] && [ -x "$BUILD/godwitd" ] || die "no $BUILD/godwit or $BUILD/godwitd: make"
upstream=$("$BUILD/godwit" --version | awk '$1 == "godwit" { print $2 }')
[[ $upstream =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "cannot read a version from $BUILD/godwit --version"
version=$upstream-1
arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || die "godwit is built for amd64 only (this is $arch)"
name=${DEBFULLNAME:-$(git config user.name 2>/dev/null || git log -1 --format=%an 2>/dev/null || true)}
mail=${DEBEMAIL:-$(git config user.email 2>/dev/null || git log -1 --format=%ae 2>/dev/null || true)}
[ -n "$name" ] && [ -n "$mail" ] || die "set DEBFULLNAME and DEBEMAIL (the package's maintainer)"
# The changelog's date: the commit's, so that the same commit gives the same package.
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$OUT/deb
rm -rf "$work"
stage=$work/godwit
mkdir -p "$stage/DEBIAN"
make --no-print-directory -s install BUILD="$BUILD" DESTDIR="$stage" PREFIX=/usr \
	SYSCONFDIR=/etc UNITDIR=/lib/systemd/system >/dev/null
# /usr/share/doc/godwit: the docs above, copyright, changelog.Debian.gz.
doc=$stage/usr/share/doc/godwit
install -m 0644 pkg/copyright "$doc/copyright"
{
	printf 'godwit (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Built from git commit %s.\n\n' "$commit"
	printf ' -- %s <%s>  %s\n' "$name" "$mail" "$date"
} | gzip -n -9 >"$doc/changelog.Debian.gz"
install -D -m 0644 pkg/lintian-overrides "$stage/usr/share/lintian/overrides/godwit"
# Binaries stripped as dh_strip does; the test guest keeps its notes (the PVH entry).
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
	"$stage/usr/bin/godwit" "$stage/usr/bin/godwitd"
strip --remove-section=.comment --strip-unneeded "$stage/usr/lib/godwit/godwit-guest.elf"
# Man pages gzipped, their links pointing at the gzipped pages.
for d in "$stage"/usr/share/man/man*; do
	for f in "$d"/*; do
		if [ -L "$f" ]; then
			ln -s "$(readlink "$f").gz" "$f.gz"
			rm "$f"
		else
			gzip -n -9 "$f"
		fi
	done
done
# Depends: the shared libraries' packages (dpkg-shlibdeps wants a debian/control).
mkdir -p "$work/src/debian"
printf 'Source: godwit\n\nPackage: godwit\nArchitecture: amd64\n' >"$work/src/debian/control"
deps=$(cd "$work/src" && dpkg-shlibdeps -O "$stage/usr/bin/godwit" "$stage/usr/bin/godwitd" |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$deps" ] || die "dpkg-shlibdeps found no dependencies"
size=$(du -k -s --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$deps/" \
	-e "s/@SIZE@/$size/" -e "s/@MAINTAINER@/$name <$mail>/" pkg/control >"$stage/DEBIAN/control"
install -m 0644 pkg/conffiles "$stage/DEBIAN/conffiles"
install -m 0755 pkg/postinst pkg/prerm pkg/postrm "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
	xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"
# Every file's time is the commit's (reproducible); directories 0755, as dpkg expects.
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
out=$OUT/godwit_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "$out"
