#!/bin/bash
# asan: no (the package holds the release build)
# The Debian package (make deb, scripts/mkdeb.sh) and make install: the package's metadata
# is sound (control fields, Depends that this host satisfies, conffiles, stripped
# binaries, man pages gzipped with -n, copyright, changelog.Debian.gz) and lintian finds no
# error or warning; dpkg installs it into a throwaway root (--root, maintainer scripts
# run outside a chroot with DPKG_ROOT set, so they leave this host's systemd alone) and
# removes and purges it again; from that root the installed godwit prints its version and
# boots the installed test guest to its poweroff; every command has its man page there,
# the completion works, and systemd-analyze verify accepts the unit.  make install and
# make uninstall with PREFIX and DESTDIR.
. "$(dirname "$0")/../lib.sh"
GODWITD=${GODWITD:-$BUILD/godwitd}

for t in dpkg-deb dpkg-shlibdeps lintian systemd-analyze man groff; do
	command -v "$t" >/dev/null || { t_fail pkg-tools "$t is missing (scripts/install-deps.sh)"; exit 0; }
done
version=$("$GODWIT" --version | awk '{ print $2 }')-1

# --- the package ---
if ! deb=$(bash "$ROOT/scripts/mkdeb.sh" "$BUILD" "$T_TMP/out" 2>"$T_TMP/mkdeb.err"); then
	t_fail pkg-build "scripts/mkdeb.sh failed: $(tail -c 400 "$T_TMP/mkdeb.err")"
	exit 0
fi
if [ "$deb" = "$T_TMP/out/godwit_${version}_amd64.deb" ] && [ -f "$deb" ]; then
	t_pass pkg-build
else
	t_fail pkg-build "made '$deb', expected $T_TMP/out/godwit_${version}_amd64.deb"; exit 0
fi

f() { dpkg-deb -f "$deb" "$1"; }
bad=()
[ "$(f Package)" = godwit ] || bad+=("Package=$(f Package)")
[ "$(f Version)" = "$version" ] || bad+=("Version=$(f Version), godwit --version says $version")
[ "$(f Architecture)" = amd64 ] || bad+=("Architecture=$(f Architecture)")
[ -n "$(f Maintainer)" ] || bad+=("no Maintainer")
# Depends: a package for each library godwit links, and each installed here.
deps=$(f Depends)
for lib in libc6 libmicrohttpd12 libjansson4 libcurl4 libssl3 libseccomp2 libcap-ng0; do
	[[ ", $deps" == *", $lib "* ]] || bad+=("Depends lacks $lib: $deps")
done
IFS=',' read -ra dl <<<"$deps"
for d in "${dl[@]}"; do
	read -r p op v <<<"${d//[()]/}"
	have=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || { bad+=("$p is not installed here"); continue; }
	[ -z "$op" ] || dpkg --compare-versions "$have" "$op" "$v" || bad+=("$p $have is not $op $v")
done
dpkg-deb --ctrl-tarfile "$deb" | tar -t >"$T_TMP/ctrl.lst"
for c in control md5sums conffiles postinst prerm postrm; do
	grep -qx "./$c" "$T_TMP/ctrl.lst" || bad+=("no DEBIAN/$c")
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
[ "$conffiles" = /etc/default/godwitd ] || bad+=("conffiles: '$conffiles'")
if [ ${#bad[@]} -eq 0 ]; then t_pass pkg-control
else t_fail pkg-control "${bad[*]}"; fi

dpkg-deb -x "$deb" "$T_TMP/x"
X=$T_TMP/x
bad=()
for p in usr/bin/godwit usr/bin/godwitd usr/lib/godwit/godwit-guest.elf \
	usr/share/man/man1/godwit.1.gz usr/share/man/man8/godwitd.8.gz \
	usr/share/bash-completion/completions/godwit usr/share/bash-completion/completions/godwitd \
	lib/systemd/system/godwitd.service etc/default/godwitd \
	usr/share/doc/godwit/copyright usr/share/doc/godwit/changelog.Debian.gz; do
	[ -e "$X/$p" ] || bad+=("no /$p")
done
for b in usr/bin/godwit usr/bin/godwitd; do
	readelf -S "$X/$b" | grep -qE '\.symtab|\.debug_' && bad+=("/$b is not stripped")
done
# Man pages: gzip -9 -n (no name, no time stamp: header flags 0, mtime 0); links to .gz.
while read -r m; do
	if [ -L "$m" ]; then
		[[ $(readlink "$m") == *.gz ]] && [ -e "$m" ] || bad+=("${m#$X} -> $(readlink "$m")")
		continue
	fi
	[[ $m == *.gz ]] || { bad+=("${m#$X} is not gzipped"); continue; }
	hdr=$(od -An -tx1 -N8 "$m" | tr -d ' ')
	[ "${hdr:6:10}" = 0000000000 ] || bad+=("${m#$X} was gzipped without -n (header $hdr)")
done < <(find "$X/usr/share/man" ! -type d)
zcat "$X/usr/share/doc/godwit/changelog.Debian.gz" | head -n 1 | grep -q "^godwit ($version) " ||
	bad+=("changelog.Debian.gz: $(zcat "$X/usr/share/doc/godwit/changelog.Debian.gz" | head -n 1)")
grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
	"$X/usr/share/doc/godwit/copyright" || bad+=("copyright is not in the DEP-5 format")
if [ ${#bad[@]} -eq 0 ]; then t_pass pkg-contents
else t_fail pkg-contents "${bad[*]}"; fi

# lintian: errors and warnings fail (overrides in pkg/lintian-overrides, each explained).
lintian --no-tag-display-limit "$deb" >"$T_TMP/lintian.out" 2>&1
if grep -qE '^[EW]: ' "$T_TMP/lintian.out"; then
	t_fail pkg-lintian "$(grep -E '^[EW]: ' "$T_TMP/lintian.out" | head -n 8 | tr '\n' ' ')"
else
	t_pass pkg-lintian
fi

# --- installed into a throwaway root ---
R=$T_TMP/root
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
: >"$R/var/lib/dpkg/status"
dpkgr() { dpkg --root="$R" --force-script-chrootless --force-depends --force-not-root "$@"; }
if ! dpkgr -i "$deb" >"$T_TMP/dpkg-i.log" 2>&1; then
	t_fail pkg-install "dpkg -i failed: $(tail -c 400 "$T_TMP/dpkg-i.log")"; exit 0
fi
st=$(dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status} ${Version}' godwit)
cf=$(dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Conffiles}' godwit)
if [ "$st" = "install ok installed $version" ] && [[ $cf == *"/etc/default/godwitd "* ]]; then
	t_pass pkg-install
else
	t_fail pkg-install "status '$st', conffiles '$cf'"
fi

got=$("$R/usr/bin/godwit" --version 2>&1)
if [ "$got" = "godwit ${version%-1}" ] && "$R/usr/bin/godwitd" --help >/dev/null 2>&1; then
	t_pass pkg-installed-runs
else
	t_fail pkg-installed-runs "godwit --version: '$got'; godwitd --help: status $?"
fi

# The installed guest, booted by the installed godwit (stripped both).
if t_need_kvm pkg-guest-boot; then
	log=$T_TMP/boot.log
	timeout 60 "$R/usr/bin/godwit" run --kernel "$R/usr/lib/godwit/godwit-guest.elf" --mem 128M \
		--cmdline "workload=mem mem=32 runtime=2" </dev/null >"$log" 2>&1
	rc=$?
	last=$(t_complete "$log" | grep -a '^memtest: t=' | tail -n 1)
	if [ "$rc" -ne 0 ]; then
		t_fail pkg-guest-boot "exit status $rc: $(tail -c 400 "$log")"
	elif ! grep -q '^godwit-guest: boot' "$log" || ! grep -q '^godwit-guest: poweroff' "$log"; then
		t_fail pkg-guest-boot "no boot or poweroff line: $(tail -c 400 "$log")"
	elif [ "$(t_field "$last" errors)" != 0 ]; then
		t_fail pkg-guest-boot "memtest: '$last'"
	else
		t_pass pkg-guest-boot
	fi
fi

# Every command the installed godwit lists has its page there, found by man.
mapfile -t cmds < <("$R/usr/bin/godwit" help | awk '/^commands:/ { on = 1; next } on && NF { print $1 } on && !NF { exit }')
bad=()
for p in godwit "${cmds[@]/#/godwit-}" godwitd; do
	sec=1; [ "$p" = godwitd ] && sec=8
	m=$(MANPATH=$R/usr/share/man man -w "$sec" "$p" 2>/dev/null) || { bad+=("$p: man -w finds nothing"); continue; }
	[[ $m == "$R"/* ]] || { bad+=("$p: man found $m"); continue; }
	MANWIDTH=80 man -l "$m" 2>"$T_TMP/man.err" | awk '/^NAME/ { on = 1; next } /^[A-Z]/ { on = 0 } on' |
		grep -qE -- "(^|[ ,])$p(,| |$)" ||
		bad+=("$p: its page's NAME does not name it")
	[ -s "$T_TMP/man.err" ] && bad+=("$p: $(head -c 200 "$T_TMP/man.err")")
done
if [ ${#cmds[@]} -lt 10 ]; then t_fail pkg-man "the installed godwit lists ${#cmds[@]} commands"
elif [ ${#bad[@]} -eq 0 ]; then t_pass pkg-man
else t_fail pkg-man "${bad[*]}"; fi

# The installed completion, through both names, with the installed programs on PATH.
c=$(PATH=$R/usr/bin:$PATH bash --norc --noprofile -c '
	. "$1/godwit"; . "$1/godwitd"
	COMP_WORDS=(godwit migrate --api s --t); COMP_CWORD=4; _godwit; echo "${COMPREPLY[*]}"
	COMP_WORDS=(godwitd --map); COMP_CWORD=1; _godwitd; echo "${COMPREPLY[*]}"' _ \
	"$R/usr/share/bash-completion/completions" 2>&1)
# What it must offer: the installed godwit's own long options of migrate that begin with --t.
want=$("$R/usr/bin/godwit" migrate --help | grep -o -- '--t[a-z-]*' | sort -u | tr '\n' ' ')
want="${want% }"$'\n--map-path'
if [ "$c" = "$want" ] && [[ "$want" == *--to* ]]; then t_pass pkg-completion
else t_fail pkg-completion "got: $(tr '\n' '|' <<<"$c"), want: $(tr '\n' '|' <<<"$want")"; fi

# The unit: systemd-analyze verify, with its paths moved into the root (it checks that
# ExecStart's program exists, the man page named in Documentation=, the syntax: any
# output is a failure, and so is a unit with a broken key (below).
verify() {
	sed -e "s|/usr/bin/|$R/usr/bin/|g" -e "s|/etc/default/|$R/etc/default/|g" "$1" \
		>"$T_TMP/unit/godwitd.service"
	(cd "$T_TMP/unit" && MANPATH=$R/usr/share/man systemd-analyze verify "$T_TMP/unit/godwitd.service" 2>&1)
}
mkdir -p "$T_TMP/unit"
unit=$R/lib/systemd/system/godwitd.service
out=$(verify "$unit"); rc=$?
sed 's/^KillMode=process/KillMode=proces/' "$unit" >"$T_TMP/broken.service"
bout=$(verify "$T_TMP/broken.service")
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
	t_fail pkg-unit "systemd-analyze verify: status $rc: $out"
elif [ -z "$bout" ]; then
	t_fail pkg-unit "systemd-analyze verify said nothing of a unit with KillMode=proces"
elif ! grep -q "^ExecStart=/usr/bin/godwitd " "$unit" || ! grep -q '^EnvironmentFile=/etc/default/godwitd$' "$unit"; then
	t_fail pkg-unit "ExecStart/EnvironmentFile: $(grep -E '^(ExecStart|EnvironmentFile)=' "$unit")"
else
	t_pass pkg-unit
fi

# Removed: the files go, the edited conffile stays; purged: it goes too.
echo 'GODWITD_HOST=edited' >>"$R/etc/default/godwitd"
dpkgr -r godwit >"$T_TMP/dpkg-r.log" 2>&1; rc1=$?
left=$(cd "$R" && find . ! -type d ! -path './var/lib/dpkg/*' | sort | tr '\n' ' ')
dpkgr -P godwit >"$T_TMP/dpkg-p.log" 2>&1; rc2=$?
left2=$(cd "$R" && find . ! -type d ! -path './var/lib/dpkg/*' | tr '\n' ' ')
if [ "$rc1" -ne 0 ] || [ "$rc2" -ne 0 ]; then
	t_fail pkg-remove "dpkg -r: $rc1, -P: $rc2: $(tail -c 300 "$T_TMP/dpkg-r.log" "$T_TMP/dpkg-p.log")"
elif [ "$left" != "./etc/default/godwitd " ] || [ -n "$left2" ]; then
	t_fail pkg-remove "after remove: '$left'; after purge: '$left2'"
else
	t_pass pkg-remove
fi

# --- make install / uninstall, PREFIX and DESTDIR ---
D=$T_TMP/destdir
make -s -C "$ROOT" install BUILD="$BUILD" DESTDIR="$D" PREFIX=/opt/gw >"$T_TMP/install.log" 2>&1
rc=$?
bad=()
[ "$rc" -eq 0 ] || bad+=("make install: status $rc: $(tail -c 300 "$T_TMP/install.log")")
for p in opt/gw/bin/godwit opt/gw/bin/godwitd opt/gw/lib/godwit/godwit-guest.elf \
	opt/gw/share/man/man1/godwit-run.1 opt/gw/share/man/man1/godwit-pause.1 opt/gw/share/man/man8/godwitd.8 \
	opt/gw/share/bash-completion/completions/godwit opt/gw/lib/systemd/system/godwitd.service \
	opt/gw/share/doc/godwit/cli.md etc/default/godwitd; do
	[ -e "$D/$p" ] || bad+=("no /$p")
done
grep -q '^ExecStart=/opt/gw/bin/godwitd ' "$D/opt/gw/lib/systemd/system/godwitd.service" 2>/dev/null ||
	bad+=("the unit's ExecStart is not /opt/gw/bin/godwitd")
echo 'GODWITD_HOST=mine' >>"$D/etc/default/godwitd"
make -s -C "$ROOT" install BUILD="$BUILD" DESTDIR="$D" PREFIX=/opt/gw >/dev/null 2>&1
grep -q '^GODWITD_HOST=mine$' "$D/etc/default/godwitd" || bad+=("a second make install replaced /etc/default/godwitd")
make -s -C "$ROOT" uninstall BUILD="$BUILD" DESTDIR="$D" PREFIX=/opt/gw >/dev/null 2>&1
left=$(cd "$D" && find . ! -type d | tr '\n' ' ')
[ "$left" = "./etc/default/godwitd " ] || bad+=("after make uninstall: $left")
if [ ${#bad[@]} -eq 0 ]; then t_pass pkg-make-install
else t_fail pkg-make-install "${bad[*]}"; fi
