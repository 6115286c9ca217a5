#!/bin/bash
# asan: no (it reads --help texts and documents; the release build's are the same)
# The operator's documents cannot drift from the programs: every command `godwit help`
# lists has a man page (man/, by its NAME line) that names every long option the
# command's --help shows; the same for `godwit fleet`'s subcommands and for godwitd(8);
# every page renders without a groff or man warning; the bash completion
# (contrib/bash-completion/godwit) offers the commands, the fleet's subcommands, every
# long option of each --help, and paths and fixed values where options take them.
# Needs no /dev/kvm.
. "$(dirname "$0")/../lib.sh"
GODWITD=${GODWITD:-$BUILD/godwitd}
MAN=$ROOT/man

for t in groff man; do
	command -v "$t" >/dev/null || { t_fail docs-tools "$t is missing (scripts/install-deps.sh)"; exit 0; }
done
[ -x "$GODWIT" ] && [ -x "$GODWITD" ] || { t_fail docs-tools "no $GODWIT or $GODWITD (make)"; exit 0; }

# render PAGE: the page as plain text, on lines too long to break (options stay whole).
render() { groff -man -Tascii -rLL=2000n -P-cbou "$1" 2>/dev/null; }
# longopts TEXT-FILE: the long options in a --help text, one a line.
longopts() { grep -oE -- '--[a-z][a-z0-9-]*' "$1" | sort -u; }
# page_of NAME: the page under man/ whose NAME line lists NAME (godwit\-pause, ...).
page_of() {
	local f
	for f in "$MAN"/*.[18]; do
		sed -n '/^\.SH NAME/{n;p;q}' "$f" | sed 's/\\-/-/g' |
			grep -qE "(^|[ ,])$1(,| |$)" && { echo "$f"; return 0; }
	done
	return 1
}
# check_opts NAME HELP-FILE PAGE: every long option in HELP-FILE is in PAGE's text.
check_opts() {
	local name=$1 help=$2 page=$3 o missing=()
	render "$page" >"$T_TMP/page.txt"
	while read -r o; do
		grep -qE -- "(^|[^a-z0-9-])$o([^a-z0-9-]|$)" "$T_TMP/page.txt" || missing+=("$o")
	done < <(longopts "$help")
	if [ "$(longopts "$help" | wc -l)" -eq 0 ]; then
		t_fail "$name" "no long option found in its --help (the test's parsing is broken)"
	elif [ ${#missing[@]} -gt 0 ]; then
		t_fail "$name" "${page#$ROOT/} lacks ${missing[*]} (listed by its --help)"
	else
		t_pass "$name"
	fi
}

# --- man pages against --help ---
"$GODWIT" help >"$T_TMP/help" 2>&1
mapfile -t cmds < <(awk '/^commands:/ { on = 1; next } on && NF { print $1 } on && !NF { exit }' "$T_TMP/help")
if [ ${#cmds[@]} -lt 10 ]; then
	t_fail man-commands "godwit help lists only ${#cmds[@]} commands: $(head -c 300 "$T_TMP/help")"
	exit 0
fi
render "$MAN/godwit.1" >"$T_TMP/godwit.txt"
missing=()
for c in "${cmds[@]}" --version --help; do
	grep -qE -- "(^|[^a-z0-9-])$c([^a-z0-9-]|$)" "$T_TMP/godwit.txt" || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then t_pass man-godwit
else t_fail man-godwit "man/godwit.1 lacks ${missing[*]} (godwit help lists them)"; fi

nopage=()
for c in "${cmds[@]}"; do
	"$GODWIT" "$c" --help >"$T_TMP/$c.help" 2>&1
	page=$(page_of "godwit-$c") || { nopage+=("$c"); continue; }
	check_opts "man-$c" "$T_TMP/$c.help" "$page"
done
if [ ${#nopage[@]} -eq 0 ]; then t_pass man-every-command
else t_fail man-every-command "no page under man/ names godwit-${nopage[*]} in its NAME line"; fi

# The fleet's subcommands: each in godwit-fleet(1), with its options.
"$GODWIT" fleet --help >"$T_TMP/fleet.help" 2>&1
mapfile -t subs < <(awk '/^subcommands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && !NF { exit }' "$T_TMP/fleet.help")
fpage=$(page_of godwit-fleet) && render "$fpage" >"$T_TMP/fleet.txt"
missing=()
for s in "${subs[@]}"; do
	"$GODWIT" fleet "$s" --help >>"$T_TMP/fleet-subs.help" 2>&1
	grep -qE "^ +$s( |$)" "$T_TMP/fleet.txt" || missing+=("$s")
done
if [ ${#subs[@]} -lt 5 ]; then
	t_fail man-fleet-subcommands "godwit fleet --help lists only ${#subs[@]} subcommands"
elif [ ${#missing[@]} -gt 0 ]; then
	t_fail man-fleet-subcommands "godwit-fleet.1 has no entry for ${missing[*]}"
else
	t_pass man-fleet-subcommands
fi
# The check itself: an option a page lacks is found.
printf 'usage: godwitd --host NAME --no-such-option\n' >"$T_TMP/fake.help"
if check_opts self "$T_TMP/fake.help" "$MAN/godwitd.8" | grep -q 'lacks --no-such-option'; then
	t_pass man-check-fails
else
	t_fail man-check-fails "an option missing from godwitd.8 went unnoticed"
fi
check_opts man-fleet-subcommand-options "$T_TMP/fleet-subs.help" "$fpage"

"$GODWITD" --help >"$T_TMP/godwitd.help" 2>&1
check_opts man-godwitd "$T_TMP/godwitd.help" "$MAN/godwitd.8"

# Every page: no warning from groff (-ww) nor from man (what lintian runs).
bad=()
for f in "$MAN"/*.[18]; do
	w=$( { groff -man -Tutf8 -ww -z "$f"; LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$f" >/dev/null; } 2>&1)
	[ -z "$w" ] || bad+=("${f#$ROOT/}: $(head -c 200 <<<"$w")")
done
if [ ${#bad[@]} -eq 0 ]; then t_pass man-no-warnings
else t_fail man-no-warnings "${bad[*]}"; fi
# ... and the check sees a warning when there is one.
printf '.TH X 1\n.SH NAME\nx \\- y\n.BOGUS\n.ft Q\nz\n' >"$T_TMP/bad.1"
w=$( { groff -man -Tutf8 -ww -z "$T_TMP/bad.1"; man --warnings -l "$T_TMP/bad.1" >/dev/null; } 2>&1)
if [ -n "$w" ]; then t_pass man-warnings-seen
else t_fail man-warnings-seen "a page with an unknown macro gave no warning"; fi

# --- bash completion ---
# complete WORDS...: COMPREPLY for the command line WORDS (the last one is being completed),
# in a bash with only the completion file loaded and the built programs first on PATH.
complete_words() {
	local prog=$1
	bash --norc --noprofile -c '
		. "$1"; shift
		COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
		f=$(complete -p "$1" | awk "{ print \$3 }")
		"$f" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
		printf "%s\n" "${COMPREPLY[@]}"' \
		_ "$COMPLETION" "$prog" "${@:2}"
}
# want NAME EXPECTED WORDS...: COMPREPLY (sorted, one line) must be EXPECTED.
want() {
	local name=$1 exp=$2 got
	shift 2
	got=$(PATH=$BIN:$PATH complete_words "$@" | sort | tr '\n' ' ')
	got=${got% }
	if [ "$got" = "$exp" ]; then t_pass "$name"
	else t_fail "$name" "completing '$*': got '$got', want '$exp'"; fi
}
COMPLETION=${COMPLETION:-$ROOT/contrib/bash-completion/godwit}
BIN=$T_TMP/bin
mkdir -p "$BIN" "$T_TMP/cdir/guests"
ln -sf "$GODWIT" "$BIN/godwit"
ln -sf "$GODWITD" "$BIN/godwitd"
touch "$T_TMP/cdir/guest.elf"
want compl-command 'migrate migrate-cancel migrate-commit migrate-resolve migrate-resume migrate-status' godwit mig
want compl-option '--timeline --tls-dir --tls-peer --to' godwit migrate --t
want compl-address 'tcp: unix:' godwit migrate --api x --to ''
want compl-unix-path "$T_TMP/cdir/guest.elf $T_TMP/cdir/guests" godwit migrate --to unix : "$T_TMP/cdir/gu"
want compl-kernel-file "$T_TMP/cdir/guest.elf $T_TMP/cdir/guests" godwit run --kernel "$T_TMP/cdir/gu"
want compl-report-file "$T_TMP/cdir/guest.elf $T_TMP/cdir/guests" godwit report "$T_TMP/cdir/gu"
want compl-dir "$T_TMP/cdir/guests" godwit run --snapshot-dir "$T_TMP/cdir/gu"
want compl-cpu-model 'x86-64-v2 x86-64-v3' godwit run --cpu-model x86-64-
want compl-fleet-sub 'drain' godwit fleet --etcd http : //e1 : 2379 dr
want compl-fleet-sub-option '--parallel' godwit fleet drain h1 --pa
want compl-fleet-create-run-options '--cpu-model --cpus' godwit fleet create vm1 --on h1 -- --kernel k --cp
want compl-godwitd '--state-dir' godwitd --st
want compl-godwitd-dir "$T_TMP/cdir/guests" godwitd --state-dir "$T_TMP/cdir/gu"
# Every long option of every command's --help is offered after "--".
missing=()
for c in "${cmds[@]}"; do
	got=$(PATH=$BIN:$PATH complete_words godwit "$c" --)
	while read -r o; do
		grep -qx -- "$o" <<<"$got" || missing+=("$c:$o")
	done < <(longopts "$T_TMP/$c.help")
done
got=$(PATH=$BIN:$PATH complete_words godwitd --)
while read -r o; do grep -qx -- "$o" <<<"$got" || missing+=("godwitd:$o"); done < <(longopts "$T_TMP/godwitd.help")
if [ ${#missing[@]} -eq 0 ]; then t_pass compl-every-option
else t_fail compl-every-option "not offered: ${missing[*]}"; fi
